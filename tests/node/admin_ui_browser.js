#!/usr/bin/env node
// Drives the Socket.IO Admin UI's own page (@socket.io/admin-ui ui/dist) in headless Chromium
// with playwright-core, against a running roomd. Used by tests/test_admin_ui_browser.py.
//
// Usage: node admin_ui_browser.js '<json>' with
//   {chromium, uiUrl, serverUrl, username, password, userDataDir, screenshot,
//    namespace, socketId, room, joinRoom, emitEvent, emitArgs, serverId, socketIoBundle}
// Prints one JSON line per step ({"step": "...", ...}) and ends with {"done": true}; any
// failure prints {"error": "..."} and exits 1. Every wait is bounded (STEP_MS), and a
// watchdog ends the process after WATCHDOG_MS whatever happens.
"use strict";

const { chromium } = require("playwright-core");

const STEP_MS = 20000;
const WATCHDOG_MS = 150000;
setTimeout(() => {
  process.stdout.write(JSON.stringify({ error: `watchdog fired after ${WATCHDOG_MS} ms` }) + "\n");
  process.exit(3);
}, WATCHDOG_MS).unref();

const opts = JSON.parse(process.argv[2]);
const step = (name, extra = {}) =>
  process.stdout.write(JSON.stringify({ step: name, ...extra }) + "\n");

async function main() {
  const context = await chromium.launchPersistentContext(opts.userDataDir, {
    executablePath: opts.chromium,
    headless: true, // playwright passes --headless
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
    viewport: { width: 1400, height: 900 },
  });
  try {
    // Loopback only: the page's web fonts (Google Fonts, the icon font on a CDN) are refused
    // here, before any connection is made; the UI works without them.
    const blocked = new Set();
    await context.route(
      (url) => !["127.0.0.1", "localhost", "[::1]"].includes(url.hostname),
      (route) => { blocked.add(new URL(route.request().url()).host); return route.abort(); });
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(STEP_MS);
    page.on("pageerror", (err) => step("pageerror", { message: String(err) }));
    await page.goto(opts.uiUrl);
    step("page loaded");

    // The UI's login form
    await page.getByLabel("Server URL").fill(opts.serverUrl);
    await page.getByLabel("Username").fill(opts.username);
    await page.getByLabel("Password").fill(opts.password);
    await page.getByRole("button", { name: "Connect" }).click();
    await page.getByLabel("Server URL").waitFor({ state: "hidden" });
    step("logged in");

    // Servers: this roomd, healthy
    await page.goto(opts.uiUrl + "#/servers/");
    await page.getByText(opts.serverId).first().waitFor();
    step("server shown", { serverId: opts.serverId });

    // Dashboard: the namespaces and their socket counts
    await page.goto(opts.uiUrl + "#/");
    for (const name of opts.namespaces) {
      await page.getByText(name, { exact: true }).first().waitFor();
    }
    step("namespaces shown", { namespaces: opts.namespaces });

    // Sockets: the stock client's socket
    await page.goto(opts.uiUrl + "#/sockets/");
    await page.getByText(opts.socketId).first().waitFor();
    step("socket shown", { id: opts.socketId });

    // Rooms: the room it joined
    await page.goto(opts.uiUrl + "#/rooms/");
    await page.getByText(opts.room, { exact: true }).first().waitFor();
    const count = await page.getByRole("row").filter({ hasText: opts.room }).first().innerText();
    step("room shown", { room: opts.room, row: count });

    // The socket's page: its rooms, and the UI's own "Join a room" action
    await page.goto(
      opts.uiUrl + `#/n/${encodeURIComponent(opts.namespace)}/sockets/${opts.socketId}`);
    await page.getByText(opts.room, { exact: true }).first().waitFor();
    const join = page.getByLabel("Join a room");
    await join.fill(opts.joinRoom);
    await page.locator("form", { has: join }).locator("button[type=submit]").click();
    await page.getByText(opts.joinRoom, { exact: true }).first().waitFor();
    await page.waitForTimeout(1000); // let the route's slide transition finish for the picture
    await page.screenshot({ path: opts.screenshot });
    step("joined from the UI", { room: opts.joinRoom, screenshot: opts.screenshot });

    // Emit to a room. The 0.5.1 page advertises the EMIT feature but has no control for
    // it, so the page sends the UI's "emit" action itself: from its own origin, over the
    // admin namespace, with the session id the UI saved when it logged in.
    await page.addScriptTag({ path: opts.socketIoBundle });
    const emitted = await page.evaluate(
      ({ serverUrl, namespace, room, event, args }) =>
        new Promise((resolve, reject) => {
          const sessionId = localStorage.getItem("session_id");
          const socket = io(serverUrl + "/admin", {
            auth: { sessionId }, withCredentials: true, forceNew: true, reconnection: false,
          });
          socket.on("connect_error", (err) => reject(new Error(err.message)));
          socket.on("config", () => {
            socket.emit("emit", namespace, room, event, ...args);
            setTimeout(() => { socket.close(); resolve(sessionId); }, 300);
          });
        }),
      { serverUrl: opts.serverUrl, namespace: opts.namespace, room: opts.joinRoom,
        event: opts.emitEvent, args: opts.emitArgs });
    step("emitted from the page", { session: emitted });
    step("blocked hosts", { hosts: [...blocked].sort() });
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify({ done: true }) + "\n");
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + "\n");
    process.exit(1);
  });
