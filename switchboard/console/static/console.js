// The switchboard operator console. Talks only to the REST API (/api/v1) with the bearer
// token the operator gives once (or in the URL fragment: #token=...). Live calls come from
// one listing, then from the event stream: an event marks its call dirty and the dirty calls
// are fetched again in batches (a long burst reloads the listing instead). The list is paged:
// only the rows of the page shown exist in the DOM, so a thousand calls cost one page of
// elements. Everything from the network is put in the page as text, never as markup: call
// data comes from SIP messages that anyone may have written.

const API = "/api/v1";
const PAGE = 50;
const BATCH_MS = 200;
const RELOAD_OVER = 100;
const CAPTURE_RENEW_MS = 120000;
const SVG = "http://www.w3.org/2000/svg";
const EVENTS = "E_DLG_STATE_CHANGED,E_CALL_HOLD,E_CALL_TRANSFER";
const ENDED = 5;

let token = null;
const calls = new Map();      // Call-ID -> call, as GET /api/v1/calls/{call} gives it
const rows = new Map();       // Call-ID -> row element, for the page shown only
const ladders = new Set();    // Call-IDs whose ladder is open
const lastOp = new Map();     // Call-ID -> what the last operation did
const opNews = new Map();     // operation id -> what its latest event said
const dirty = new Set();
let batch = null;
let pageNo = 0;
let filter = "";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let doc = null;
  try { doc = await response.json(); } catch { doc = null; }
  return { status: response.status, doc };
}

// -- the token --------------------------------------------------------------------------------

function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem("switchboard-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname);  // out of the address bar
  }
  return sessionStorage.getItem("switchboard-token");
}

async function connect(candidate) {
  token = candidate;
  const probe = await api("GET", `${API}/calls?limit=1`);
  if (probe.status === 401) {
    sessionStorage.removeItem("switchboard-token");
    $("login").hidden = false;
    $("login-error").textContent = candidate ? "the token was refused" : "";
    return;
  }
  sessionStorage.setItem("switchboard-token", token);
  $("login").hidden = true;
  $("console").hidden = false;
  captureOn();
  setInterval(captureOn, CAPTURE_RENEW_MS);
  await loadAll();
  listen();
}

// The ladders need the node's message capture, which runs only while a console leases it.
function captureOn() { api("PUT", `${API}/capture`, { enabled: true }).catch(() => {}); }

// -- calls ------------------------------------------------------------------------------------

async function loadAll() {
  const fresh = new Map();
  let cursor = null;
  do {
    const query = `limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    const { status, doc } = await api("GET", `${API}/calls?${query}`);
    if (status !== 200) return;
    for (const call of doc.calls) fresh.set(call.call_id, call);
    cursor = doc.next_cursor;
  } while (cursor);
  calls.clear();
  for (const [k, v] of fresh) calls.set(k, v);
  render();
}

function markDirty(callId) {
  if (!callId) return;
  dirty.add(callId);
  if (batch === null) batch = setTimeout(refreshDirty, BATCH_MS);
}

async function refreshDirty() {
  const ids = [...dirty];
  dirty.clear();
  if (ids.length > RELOAD_OVER) {
    await loadAll();
  } else {
    await Promise.all(ids.map(async (id) => {
      const { status, doc } = await api("GET", `${API}/calls/${encodeURIComponent(id)}`);
      if (status === 200) calls.set(id, doc);
      else if (status === 404) calls.delete(id);
      if (ladders.has(id)) drawLadder(id);
    }));
    render();
  }
  batch = null;
  if (dirty.size) batch = setTimeout(refreshDirty, BATCH_MS);
}

function onEvent(name, data) {
  const params = data.params || {};
  const id = params.callid;
  if (data.operation && id) {
    const what = [name === "E_CALL_HOLD" ? `${params.action}` : "transfer", params.state,
      params.status || ""].join(" ").trim();
    const text = `${what} (operation ${data.operation})`;
    lastOp.set(id, text);
    opNews.set(data.operation, text);
    if (opNews.size > 1000) opNews.delete(opNews.keys().next().value);
  }
  if (name === "E_DLG_STATE_CHANGED" && params.new_state === ENDED) {
    calls.delete(id);
    dirty.delete(id);
    render();
    return;
  }
  markDirty(id);
  markDirty(params.transfer_callid);
}

// Server-Sent Events over fetch: EventSource cannot send the bearer token.
async function listen() {
  for (;;) {
    try {
      const response = await fetch(`${API}/events?event=${EVENTS}`, {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
      });
      if (!response.ok) throw new Error(`events: ${response.status}`);
      setStatus(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (data.length) onEvent(name, JSON.parse(data.join("\n")));
        }
      }
    } catch (error) {
      console.warn(error);
    }
    setStatus(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
    await loadAll();  // events were missed while the stream was down
  }
}

function setStatus(up) {
  const status = $("status");
  status.textContent = up ? "live" : "reconnecting";
  status.classList.toggle("down", !up);
}

// -- the list ---------------------------------------------------------------------------------

function shown() {
  const words = filter.toLowerCase().split(/\s+/).filter(Boolean);
  const all = [...calls.values()];
  if (!words.length) return all;
  return all.filter((c) => {
    const text = `${c.call_id} ${c.id} ${c.from} ${c.to} ${c.state} ${c.hold}`.toLowerCase();
    return words.every((w) => text.includes(w));
  });
}

function render() {
  const list = shown();
  const pages = Math.max(1, Math.ceil(list.length / PAGE));
  pageNo = Math.min(pageNo, pages - 1);
  const visible = list.slice(pageNo * PAGE, (pageNo + 1) * PAGE);
  $("count").textContent = `${calls.size} live call${calls.size === 1 ? "" : "s"}`;
  $("page").textContent = `page ${pageNo + 1} of ${pages} (${list.length} shown)`;
  $("prev").disabled = pageNo === 0;
  $("next").disabled = pageNo >= pages - 1;
  const keep = new Set(visible.map((c) => c.call_id));
  for (const [id, row] of rows) {
    if (!keep.has(id)) { row.remove(); rows.delete(id); }
  }
  const container = $("calls");
  let before = container.firstChild;
  for (const call of visible) {
    let row = rows.get(call.call_id);
    if (!row) { row = newRow(call.call_id); rows.set(call.call_id, row); }
    fillRow(row, call);
    if (row !== before) container.insertBefore(row, before);
    before = row.nextSibling;
  }
}

// A row's controls are made once; updates touch only its read-outs, so a destination being
// typed survives the events that arrive meanwhile.
function newRow(callId) {
  const row = el("div", { class: "call", "data-call-id": callId });
  const info = el("div", { class: "info" });
  const holdLeg = el("select", { class: "hold-leg", "aria-label": "leg to hold" },
    el("option", { value: "callee" }, "callee"), el("option", { value: "caller" }, "caller"),
    el("option", { value: "both" }, "both"));
  const transferLeg = el("select", { class: "transfer-leg", "aria-label": "leg to transfer" },
    el("option", { value: "callee" }, "callee"), el("option", { value: "caller" }, "caller"));
  const destination = el("input", { class: "destination", type: "text",
    placeholder: "sip:destination@host", "aria-label": "transfer destination" });
  const button = (cls, label, action) => {
    const b = el("button", { class: cls, type: "button" }, label);
    b.addEventListener("click", action);
    return b;
  };
  const path = () => `${API}/calls/${encodeURIComponent(callId)}`;
  const actions = el("div", { class: "actions" },
    holdLeg,
    button("hold", "Hold", () => operate(callId, "hold", "POST", `${path()}/hold`,
      { leg: holdLeg.value })),
    button("unhold", "Unhold", () => operate(callId, "unhold", "POST", `${path()}/unhold`,
      { leg: holdLeg.value })),
    el("span", { class: "sep" }),
    transferLeg, destination,
    button("transfer", "Transfer", () => operate(callId, "transfer", "POST",
      `${path()}/transfer`, { leg: transferLeg.value, destination: destination.value })),
    el("span", { class: "sep" }),
    button("end", "End", () => operate(callId, "end", "DELETE", path())),
    button("ladder-toggle", "Ladder", () => toggleLadder(callId)));
  row.append(info, actions, el("div", { class: "op" }), el("div", { class: "ladder" }));
  return row;
}

function fillRow(row, call) {
  const key = JSON.stringify(call) + (lastOp.get(call.call_id) || "");
  if (row.dataset.shown === key) return;
  row.dataset.shown = key;
  row.dataset.state = call.state;
  row.dataset.hold = call.hold;
  const head = el("div", { class: "head" },
    el("span", { class: "cid" }, call.call_id),
    el("span", { class: "parties" }, `${call.from_user || call.from} \u2192 ${call.to_user || call.to}`),
    el("span", { class: `badge state ${call.state}` }, call.state),
    el("span", { class: `badge hold hold-${call.hold}` },
      call.hold === "none" ? "not held" : `held: ${call.hold}`));
  const legs = el("table", { class: "legs" },
    el("tr", {}, el("th", {}, "leg"), el("th", {}, "tag"), el("th", {}, "contact"),
      el("th", {}, "media"), el("th", {}, "on hold")));
  for (const leg of call.legs) {
    legs.append(el("tr", { class: `leg ${leg.leg}` }, el("td", {}, leg.leg),
      el("td", {}, leg.tag), el("td", {}, leg.contact), el("td", {}, leg.media || "-"),
      el("td", {}, leg.on_hold ? "yes" : "no")));
  }
  const transfers = el("div", { class: "transfers" });
  for (const link of call.transfers) {
    const go = el("button", { type: "button", class: "link" },
      `${link.direction === "to" ? "transferred to" : "transferred from"} ${link.call_id} (${link.state})`);
    go.addEventListener("click", () => { $("filter").value = link.call_id; setFilter(); });
    transfers.append(go);
  }
  row.querySelector(".info").replaceChildren(head, legs, transfers);
  row.querySelector(".op").textContent = lastOp.get(call.call_id) || "";
}

async function operate(callId, kind, method, path, body) {
  const { status, doc } = await api(method, path, body);
  // The operation's events may have come in on the stream before this answer did.
  const text = status === 202
    ? opNews.get(doc.id) || `${kind}: ${doc.state} (operation ${doc.id})`
    : `${kind} refused: ${status} ${doc ? doc.detail || doc.title : ""}`;
  lastOp.set(callId, text);
  const row = rows.get(callId);
  if (row) row.querySelector(".op").textContent = text;
  markDirty(callId);
}

// -- the ladder -------------------------------------------------------------------------------

function toggleLadder(callId) {
  if (ladders.has(callId)) {
    ladders.delete(callId);
    const row = rows.get(callId);
    if (row) row.querySelector(".ladder").replaceChildren();
  } else {
    ladders.add(callId);
    drawLadder(callId);
  }
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

async function drawLadder(callId) {
  const { status, doc } = await api("GET", `${API}/calls/${encodeURIComponent(callId)}/messages`);
  const row = rows.get(callId);
  if (!row || !ladders.has(callId)) return;
  const box = row.querySelector(".ladder");
  if (status !== 200) {
    box.replaceChildren(el("div", { class: "error" }, doc ? doc.detail || doc.title : `${status}`));
    return;
  }
  const messages = doc.messages;
  if (!messages.length) {
    box.replaceChildren(el("div", {}, doc.capturing ? "no messages captured yet"
      : "the capture is off"));
    return;
  }
  const columns = [];
  const column = (name) => {
    if (!columns.includes(name)) columns.push(name);
    return columns.indexOf(name);
  };
  const arrows = messages.map((m) => m.direction === "in"
    ? [column(m.peer), column(m.local), m] : [column(m.local), column(m.peer), m]);
  const gap = 260; const left = 90; const top = 40; const step = 24;
  const width = left + gap * (columns.length - 1) + 140;
  const height = top + step * (messages.length + 1);
  const picture = svg("svg", { width, height, class: "ladder-svg", role: "img",
    "aria-label": `SIP messages of ${callId}` });
  const defs = svg("defs", {});
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
  defs.append(marker);
  picture.append(defs);
  columns.forEach((name, i) => {
    const x = left + gap * i;
    picture.append(svg("text", { x, y: 16, "text-anchor": "middle", class: "peer" }, name));
    picture.append(svg("line", { x1: x, y1: 24, x2: x, y2: height, class: "life" }));
  });
  const t0 = messages[0].at;
  arrows.forEach(([from, to, m], k) => {
    const y = top + step * k + 8;
    const x1 = left + gap * from; const x2 = left + gap * to;
    picture.append(svg("text", { x: 4, y: y + 4, class: "time" }, `+${(m.at - t0).toFixed(3)}s`));
    picture.append(svg("line", { x1, y1: y, x2, y2: y, class: `msg ${m.direction}`,
      "marker-end": "url(#arrow)" }));
    const label = m.first_line.length > 44 ? `${m.first_line.slice(0, 43)}\u2026` : m.first_line;
    const title = m.first_line.startsWith("SIP/2.0") && m.cseq ? `${label} (${m.cseq})` : label;
    picture.append(svg("text", { x: (x1 + x2) / 2, y: y - 4, "text-anchor": "middle",
      class: "label" }, title));
  });
  box.replaceChildren(picture);
}

// -- start ------------------------------------------------------------------------------------

function setFilter() {
  filter = $("filter").value;
  pageNo = 0;
  render();
}

$("filter").addEventListener("input", setFilter);
$("prev").addEventListener("click", () => { pageNo -= 1; render(); });
$("next").addEventListener("click", () => { pageNo += 1; render(); });
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  connect($("token").value);
});

const saved = takeToken();
// A node without a token answers without one; otherwise the probe shows the form.
connect(saved ?? "");
