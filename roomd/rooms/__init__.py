"""Rooms: the RoomManager actor and the per-namespace adapters.

``manager`` runs membership commands in one task; ``adapter`` holds each
namespace's rooms (in memory, or a cluster adapter's local part);
``delivery`` puts encoded messages into outboxes under the slow-consumer
policy; ``taps`` feeds ``roomd tail`` and counts events; ``acks`` routes
broadcast acknowledgements.
"""
