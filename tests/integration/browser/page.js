// The browser tests' page helpers, loaded by app.html and preview.html. Each
// returns a promise the test awaits (Selenium's execute_async_script) and
// writes what it observed into the page, so screenshots show it too.
"use strict";

function show(what, value) {
    const p = document.createElement("pre");
    p.textContent = what + " -> " + JSON.stringify(value);
    document.getElementById("log").appendChild(p);
    return value;
}

// fetch URL and report what script may read of the answer, or the error a
// CORS refusal leaves (a TypeError with no status).
async function call(url, init) {
    init = init || {};
    const what = (init.method || "GET") + " " + url;
    try {
        const r = await fetch(url, init);
        return show(what, {status: r.status, remaining: r.headers.get("X-RateLimit-Remaining"),
                           body: await r.text()});
    } catch (e) {
        return show(what, {error: e.name + ": " + e.message});
    }
}

// Add an iframe for URL; resolves on its load event, which fires for a
// refused frame too (the test then looks at what the frame holds).
function frame(url) {
    return new Promise(resolve => {
        const f = document.createElement("iframe");
        f.onload = () => resolve(show("iframe " + url, "load event"));
        f.src = url;
        document.getElementById("frames").appendChild(f);
    });
}

let sock = null;
let opened = 0;

function wsOpen(url) {
    return new Promise((resolve, reject) => {
        const s = new WebSocket(url);
        s.onopen = () => { sock = s; opened++; show("websocket", "open"); resolve(opened); };
        s.onerror = () => reject(new Error("websocket to " + url + " failed"));
    });
}

// Send TEXT on the open socket; resolves with the next message.
function wsEcho(text) {
    return new Promise((resolve, reject) => {
        if (!sock || sock.readyState !== WebSocket.OPEN)
            return reject(new Error("websocket not open (state " + (sock && sock.readyState) + ")"));
        sock.onmessage = e => resolve(show("echo", {sent: text, got: e.data, opened: opened}));
        sock.onclose = e => reject(new Error("websocket closed: " + e.code));
        sock.send(text);
    });
}

document.getElementById("origin").textContent = location.origin;
