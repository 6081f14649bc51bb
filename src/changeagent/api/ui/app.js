// The changeagent dashboard: plain JavaScript, no dependencies, no build step.
//
// Everything a server sends is shown through textContent and DOM nodes, never as
// HTML. Every URL is relative to the page (<prefix>/ui/), so the page works under
// -P and behind a proxy that moves the prefix; all requests are same-origin, so
// with -pw the browser's Basic credentials for the page cover them.
"use strict";

(function dashboard() {
  const REFRESH_MS = 1000;
  const TAIL_ROWS_MAX = 50;
  // The live tail starts this many log entries before the end, so a fresh page
  // shows the newest changes at once (feeds read forwards only).
  const TAIL_BACKLOG_ENTRIES = 100;
  const TAIL_RETRY_MS = 2000;
  const DATA_CHARACTERS_MAX = 300;
  const ERROR_CHARACTERS_MAX = 300;

  const byId = (id) => document.getElementById(id);

  // URLs and requests ---------------------------------------------------------

  function apiUrl(path) {
    // A page opened as http://user:password@host/ui/ would otherwise give URLs
    // with credentials, which fetch() and EventSource refuse; the browser sends
    // the page's credentials by itself.
    const url = new URL("../" + path, document.baseURI);
    url.username = "";
    url.password = "";
    return url.href;
  }

  async function request(path, options) {
    const settings = Object.assign({ cache: "no-store", credentials: "same-origin" }, options);
    const response = await fetch(apiUrl(path), settings);
    return { status: response.status, ok: response.ok, text: await response.text() };
  }

  // The message of an error answer: its JSON {"error": "..."} or the start of its text.
  function failure(answer) {
    let message = answer.text.slice(0, ERROR_CHARACTERS_MAX);
    try {
      const parsed = JSON.parse(answer.text);
      if (parsed && typeof parsed.error === "string") message = parsed.error;
    } catch (_) {
      // not JSON: the text it is
    }
    return answer.status + ": " + message;
  }

  async function getJson(path) {
    const answer = await request(path);
    if (!answer.ok) throw new Error("GET /" + path + " answered " + failure(answer));
    return JSON.parse(answer.text);
  }

  // DOM helpers: text only ----------------------------------------------------

  function show(id, value) {
    const node = byId(id);
    const text = String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  function cell(tag, value) {
    const node = document.createElement(tag);
    node.textContent = String(value);
    return node;
  }

  function splitTags(text) {
    return text.split(",").map((tag) => tag.trim()).filter((tag) => tag !== "");
  }

  // Status: Raft, members, health, settings -----------------------------------

  function roleOf(id, cluster, raft) {
    const roles = cluster.roles || {};
    const role = roles[id] || ((raft.learners || []).includes(id) ? "learner" : "voter");
    if (role !== "learner") return role;
    return (cluster.readOnly || []).includes(id) ? "learner (read-only)" : "learner (joining)";
  }

  // [id, address, role, state, match, lag] per member. Only the leader knows the
  // others' state (its replication to them), match index and lag: "–" elsewhere.
  function memberRows(cluster, raft) {
    const members = cluster.members || {};
    const ids = Object.keys(members);
    if (ids.length === 0) ids.push(raft.id); // standalone: no cluster yet
    const leading = raft.state === "Leader" || raft.state === "Standalone";
    const peers = raft.peers || {};
    return ids.sort().map((id) => {
      const peer = peers[id];
      let state = "–";
      let match = "–";
      let lag = "–";
      if (id === raft.id) {
        state = raft.state;
      } else if (id === raft.leader) {
        state = "Leader";
      }
      if (leading && id === raft.id) {
        match = raft.lastIndex;
        lag = 0;
      } else if (leading && peer) {
        // Raft's name for the member, then how the leader replicates to it.
        state = (peer.learner ? "Learner" : "Follower") + ", " + peer.state;
        if (peer.reachable === false) state += ", unreachable";
        match = peer.match;
        lag = Math.max(0, raft.lastIndex - peer.match);
      }
      const address = members[id] || "(standalone)";
      return [id, address, roleOf(id, cluster, raft), state, match, lag];
    });
  }

  let shownMembers = "";

  function showMembers(cluster, raft) {
    const rows = memberRows(cluster, raft);
    const key = JSON.stringify([rows, raft.leader, raft.id]);
    if (key === shownMembers) return; // unchanged: keep the DOM (and any selection)
    shownMembers = key;
    const body = byId("members").tBodies[0];
    body.replaceChildren(
      ...rows.map((values) => {
        const row = document.createElement("tr");
        row.dataset.member = values[0];
        if (values[0] === raft.leader) row.classList.add("leader");
        if (values[0] === raft.id) row.classList.add("self");
        row.append(...values.map((value) => cell("td", value)));
        return row;
      })
    );
    const leading = raft.state === "Leader" || raft.state === "Standalone";
    show(
      "members-note",
      leading
        ? "Match index and lag as this node, the leader, sees them (lag: entries behind its last index)."
        : "Match index and lag are known to the leader: open its dashboard to see them."
    );
  }

  function showRaft(raft, cluster) {
    const members = cluster.members || {};
    const standalone = raft.state === "Standalone";
    let leader = raft.leader === "0" ? "none" : raft.leader;
    if (standalone) leader = raft.id + " (standalone: this node takes writes itself)";
    const address = members[raft.leader];
    show("node-id", raft.id);
    show("node-state", raft.state);
    show("leader", address ? leader + " (" + address + ")" : leader);
    show("term", raft.term);
    show("commit-index", raft.committedIndex);
    show("applied-index", raft.appliedIndex);
    show("last-index", raft.lastIndex);
    show("cluster-id", raft.clusterId === "0" ? "none (standalone)" : raft.clusterId);
    show("quorum", cluster.quorum ? cluster.quorum + " of " + raft.voters.length + " voters" : "–");
    document.title = "changeagent " + raft.id;
  }

  async function refreshHealth() {
    const answer = await request("health");
    const badge = byId("health");
    show("health", answer.status + " " + answer.text);
    badge.className = "badge " + (answer.ok ? "up" : "down");
  }

  async function refreshSettings() {
    const answer = await request("config");
    if (!answer.ok) throw new Error("GET /config answered " + failure(answer));
    show("settings", answer.text);
  }

  async function refreshStatus() {
    const [raft, cluster] = await Promise.all([getJson("diagnostics/raft"), getJson("cluster")]);
    showRaft(raft, cluster);
    showMembers(cluster, raft);
  }

  async function refresh() {
    const results = await Promise.allSettled([refreshStatus(), refreshHealth(), refreshSettings()]);
    const problems = results
      .filter((result) => result.status === "rejected")
      .map((result) => String(result.reason && result.reason.message ? result.reason.message : result.reason));
    const problem = byId("problem");
    problem.hidden = problems.length === 0;
    show("problem", problems.join("; "));
    show("refreshed", "updated " + new Date().toLocaleTimeString());
    window.setTimeout(refresh, REFRESH_MS);
  }

  async function markHealth(up) {
    try {
      const answer = await request("health", {
        method: "PUT",
        body: new URLSearchParams({ up: String(up) }),
      });
      show("health-note", answer.ok ? (up ? "marked up" : "marked down: GET /health answers 503") : failure(answer));
      await refreshHealth();
    } catch (error) {
      show("health-note", String(error.message || error));
    }
  }

  // Live tail: the SSE feed of GET /changes ------------------------------------

  const tail = { source: null, retry: null, tags: [], lastId: 0n, generation: 0 };

  function stopTail() {
    if (tail.source !== null) tail.source.close();
    if (tail.retry !== null) window.clearTimeout(tail.retry);
    tail.source = null;
    tail.retry = null;
  }

  async function startTail() {
    const generation = ++tail.generation;
    stopTail();
    tail.tags = splitTags(byId("tail-tags").value);
    tail.lastId = 0n;
    byId("tail").tBodies[0].replaceChildren();
    let since = 0;
    try {
      const raft = await getJson("diagnostics/raft");
      since = Math.max(0, raft.appliedIndex - TAIL_BACKLOG_ENTRIES);
    } catch (error) {
      show("tail-status", String(error.message || error));
    }
    if (generation === tail.generation) openFeed(String(since));
  }

  function openFeed(since) {
    const query = new URLSearchParams({ feed: "eventsource", since: since });
    for (const tag of tail.tags) query.append("tag", tag);
    const source = new EventSource(apiUrl("changes?" + query.toString()));
    tail.source = source;
    show("tail-status", "connecting…");
    source.onopen = () => show("tail-status", "live" + (tail.tags.length ? ": tags " + tail.tags.join(", ") : ""));
    source.addEventListener("change", (event) => addChange(event));
    source.addEventListener("missed", (event) => {
      const gap = JSON.parse(event.data);
      show("tail-status", "changes before " + gap.firstRetained + " were purged");
    });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) {
        // The stream ended (--stream-max-age, a restart): the browser reconnects
        // by itself and resumes after the last id (Last-Event-ID).
        show("tail-status", "reconnecting…");
        return;
      }
      // Refused (503 beyond --max-streams, 401, the node down): try again later,
      // after the last change shown.
      show("tail-status", "disconnected; trying again");
      source.close();
      if (tail.source === source) {
        const resume = tail.lastId > 0n ? tail.lastId.toString() : since;
        tail.retry = window.setTimeout(() => openFeed(resume), TAIL_RETRY_MS);
      }
    };
  }

  function addChange(event) {
    const id = BigInt(event.lastEventId); // exact, where JSON numbers stop at 2^53
    if (id <= tail.lastId) return;
    tail.lastId = id;
    const change = JSON.parse(event.data);
    let data = JSON.stringify(change.data);
    if (data.length > DATA_CHARACTERS_MAX) data = data.slice(0, DATA_CHARACTERS_MAX) + "…";
    const row = document.createElement("tr");
    row.dataset.changeId = id.toString();
    row.append(
      cell("td", id.toString()),
      cell("td", new Date(change._ts / 1e6).toISOString()),
      cell("td", change.type || 0),
      cell("td", (change.tags || []).join(", ")),
      cell("td", data)
    );
    const body = byId("tail").tBodies[0];
    body.prepend(row);
    while (body.rows.length > TAIL_ROWS_MAX) body.deleteRow(-1);
  }

  // Posting a change ----------------------------------------------------------

  function changeBody() {
    const body = { data: JSON.parse(byId("post-data").value) };
    const tags = splitTags(byId("post-tags").value);
    if (tags.length > 0) body.tags = tags;
    const type = byId("post-type").value.trim();
    if (type !== "") body.type = Number(type);
    return body;
  }

  async function postChange(event) {
    event.preventDefault();
    const result = byId("post-result");
    let body;
    try {
      body = changeBody();
    } catch (error) {
      result.className = "result error";
      show("post-result", "Data is not valid JSON: " + error.message);
      return;
    }
    const button = byId("post-submit");
    button.disabled = true;
    try {
      const answer = await request("changes", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      result.className = "result " + (answer.ok ? "ok" : "error");
      show("post-result", answer.ok ? "stored " + answer.text : failure(answer));
    } catch (error) {
      result.className = "result error";
      show("post-result", String(error.message || error));
    } finally {
      button.disabled = false;
    }
  }

  // Start -----------------------------------------------------------------------

  byId("mark-down").addEventListener("click", () => markHealth(false));
  byId("mark-up").addEventListener("click", () => markHealth(true));
  byId("post-form").addEventListener("submit", postChange);
  byId("tail-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startTail();
  });
  refresh();
  startTail();
})();
