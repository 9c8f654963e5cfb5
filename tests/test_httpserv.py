"""roomd's side-listener HTTP server (metrics, HTTP API) against malformed and hostile
requests: every refusal is an HTTP status with the JSON error shape, and the listener keeps
serving."""

from __future__ import annotations

import functools
import json

import harness
import pytest
import trio

from roomd.ops.httpserv import Request, Response, json_response, serve_http


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    return json_response(200, {"method": request.method, "path": request.path,
                               "query": request.query, "body": request.body.decode()})


@pytest.fixture
async def port(nursery):
    _, bound = await nursery.start(functools.partial(serve_http, echo, "127.0.0.1:0",
                                                     name="test", max_body=100))
    return bound


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


async def test_requests_and_keepalive(port):
    status, _, body = await harness.http_request(port, "POST", "/a%20b?x=1", body=b"hello")
    assert status == 200
    assert json.loads(body) == {"method": "POST", "path": "/a b", "query": {"x": "1"},
                                "body": "hello"}
    # two requests on one connection
    two = (harness.build_request("GET", "/one", headers={"Connection": "keep-alive"})
           + harness.build_request("GET", "/two"))
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(two)
            data = b""
            while data.count(b"HTTP/1.1 200") < 2:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
    assert b'"/one"' in data and b'"/two"' in data


async def test_head_has_no_body(port):
    head_then_get = (harness.build_request("HEAD", "/h", headers={"Connection": "keep-alive"})
                     + harness.build_request("GET", "/g"))
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head_then_get)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    first, second = data.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first.endswith(b"\r\n\r\n") and b"Content-Length: " in first  # headers only
    assert second.endswith(b'"path":"/g","query":{},"body":""}\n')


@pytest.mark.parametrize("raw, status, code", [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, 413,
     "body_too_large"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"80\r\n" + b"x" * 128 + b"\r\n0\r\n\r\n", 413, "body_too_large"),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "head_too_large"),
])
async def test_malformed(port, raw, status, code):
    got, headers, body = await harness.raw_http(port, raw)
    assert got == status, body
    assert headers.get("content-type") == "application/json"
    assert error_code(body) == code
    # still serving
    assert (await harness.http_request(port, "GET", "/ok"))[0] == 200


async def test_handler_error_is_500_and_logged(port, caplog):
    status, _, body = await harness.http_request(port, "GET", "/boom")
    assert status == 500 and error_code(body) == "internal"
    assert "handler failed" in caplog.text
    assert (await harness.http_request(port, "GET", "/ok"))[0] == 200


async def test_truncated_body_and_silence_end_the_connection(port):
    # a body shorter than announced: the server waits (bounded by its request timeout), the
    # client gives up and goes away; the listener is unharmed
    with pytest.raises(trio.TooSlowError):
        await harness.raw_http(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nab",
                               timeout=1)
    assert (await harness.http_request(port, "GET", "/ok"))[0] == 200


async def test_bad_listen_address():
    with pytest.raises(ValueError, match="HOST:PORT"):
        await serve_http(echo, "nowhere", name="x")
