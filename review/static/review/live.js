/* BotArmy HITL reviewer pages: live events over the websocket, and keyboard shortcuts.
 *
 * Live: opens <body data-ws-url> (/ws/events/, authenticated by the session cookie), resuming
 * after <body data-last-event-id> (the settled point when the page was rendered: events.selectors.resume_point), remembers the
 * last event id and reconnects with ?last_event_id= after a drop (exponential backoff with
 * jitter; a silent socket is treated as dead after 45 s without any message or ping).
 * Each event is dispatched on <body> as a DOM event "hitl:event" (detail: the event payload);
 *   - the inbox list re-fetches itself with htmx ("hitl:inbox", at most once per 2 s whatever the
 *     rate of events; none while the tab is hidden);
 *   - emergency_stop_triggered / emergency_resolved dispatch "hitl:stop" (the banners refresh);
 *   - a decision panel [data-live-approval] still pending refreshes when an event names its
 *     approval (decided elsewhere, timed out) or changes its project (stop, override decided);
 *     not under someone typing in it: it says so and refreshes when they leave the text box (for
 *     another place than one of its buttons), and the text typed goes back into the refreshed panel.
 * Signed out: a stream the server ends with 4401, or a reconnect refused twice in a row while
 * <body data-session-url> answers 401, or any htmx request answered 401: the dot says so and the
 * page stops reconnecting. Countdowns (.time-left[data-expires]) tick every second.
 * Keyboard: j / k move the selection in the inbox, Enter opens it; on a decision page a approves,
 * e opens the amend editor, r focuses the rejection reason, m the modifications; Ctrl+Enter in a
 * text area submits its form. Shortcuts are ignored while typing in a field.
 * Drafts: text typed in a pending decision panel is kept in the tab's sessionStorage until the
 * panel is settled, and put back after a lost session's sign-in brings the reviewer back.
 */
(function () {
  "use strict";

  var STABLE_MS = 10000;  // a connection open this long resets the reconnect backoff
  var STOP_EVENTS = { emergency_stop_triggered: 1, emergency_resolved: 1 };
  var PANEL_PROJECT_EVENTS = { emergency_stop_triggered: 1, emergency_resolved: 1, budget_override_decided: 1 };

  // ---- live events ------------------------------------------------------------------------
  var live = {
    socket: null,
    lastId: null,      // highest event id seen: the resume point (?last_event_id=)
    initialId: null,   // where the page's stream started (its settled point when rendered)
    seen: {},          // project id -> highest event id seen of that project
    attempt: 0,
    timer: null,
    watchdog: null,
    closedByUs: false,
  };
  window.hitlLive = live;  // for debugging and tests: hitlLive.lastId, hitlLive.socket

  function setStatus(state, label) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.setAttribute("data-state", state);
    var text = el.querySelector(".label");
    if (text && text.textContent !== label) text.textContent = label;  // the same words are not read again
  }

  function socketUrl() {
    var path = document.body.getAttribute("data-ws-url");
    if (!path) return null;
    var url = new URL(path, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    var project = document.body.getAttribute("data-project-id");
    if (project) url.searchParams.set("project_id", project);
    if (live.lastId !== null) url.searchParams.set("last_event_id", String(live.lastId));
    return url.toString();
  }

  function armWatchdog() {
    clearTimeout(live.watchdog);
    live.watchdog = setTimeout(function () {
      // no message or ping for too long: the connection is dead even if the browser thinks not.
      // A dead network leaves close() pending until the browser gives up (minutes), with the dot
      // still saying "Live": the socket is dropped here and the reconnects start at once.
      var socket = live.socket;
      if (!socket) return;
      socket.onclose = socket.onmessage = socket.onerror = null;
      live.socket = null;
      try { socket.close(); } catch (e) { /* ignore */ }
      scheduleReconnect();
    }, 45000);
  }

  // A refused websocket handshake (the session ended while the socket was down: a restart, a
  // sign-out) looks like any failed connection: after two failed attempts in a row, ask the server
  // whether this browser is still signed in (204), else say so and stop reconnecting.
  function signedOut() {
    live.closedByUs = true;
    clearTimeout(live.timer);
    if (live.socket) { try { live.socket.close(); } catch (e) { /* ignore */ } }
    setStatus("ended", "Signed out: reload to sign in");
  }

  function probeSession() {
    var url = document.body.getAttribute("data-session-url");
    if (!url || !window.fetch) return;
    fetch(url, { credentials: "same-origin", headers: { "HX-Request": "true" }, cache: "no-store" })
      .then(function (response) { if (response.status === 401) signedOut(); })
      .catch(function () { /* the server is down: the reconnects go on */ });
  }

  function scheduleReconnect() {
    clearTimeout(live.timer);
    if (live.attempt >= 2) probeSession();
    var base = Math.min(30000, 500 * Math.pow(2, live.attempt));
    var delay = base / 2 + Math.random() * base / 2;
    live.attempt += 1;
    setStatus("reconnecting", "Reconnecting…");
    live.timer = setTimeout(connect, delay);
  }

  // The server stopped following a project this user may no longer see (its role taken away):
  // a page about that project says so and stops, as a socket of that one project closed with
  // 4403 would; the inbox (every project) goes on.
  function accessEnded(projectId) {
    var about = document.querySelectorAll("[data-project-id]");
    for (var i = 0; i < about.length; i++) {
      if (about[i].getAttribute("data-project-id") !== String(projectId)) continue;
      live.closedByUs = true;
      clearTimeout(live.timer);
      if (live.socket) { try { live.socket.close(); } catch (e) { /* ignore */ } }
      setStatus("ended", "No longer allowed here: reload");
      return;
    }
  }

  function handle(payload) {
    if (payload && payload.type === "access_ended") { accessEnded(payload.project_id); return; }
    // heartbeats, and the error the server sends before closing with 4400 (onclose says it)
    if (!payload || payload.type === "ping" || payload.type === "error") return;
    if (typeof payload.id === "number") {
      // ids increase within a project (the server's order); across projects they may interleave,
      // so duplicates are told per project, and the resume point is the highest id seen
      var project = String(payload.project_id);
      var floor = project in live.seen ? live.seen[project] : live.initialId;
      if (floor !== null && payload.id <= floor) return;  // already seen (replay after a reconnect)
      live.seen[project] = payload.id;
      if (live.lastId === null || payload.id > live.lastId) live.lastId = payload.id;
    }
    document.body.dispatchEvent(new CustomEvent("hitl:event", { detail: payload, bubbles: true }));
    if (STOP_EVENTS[payload.event_type]) {
      document.body.dispatchEvent(new CustomEvent("hitl:stop", { detail: payload, bubbles: true }));
    }
    refreshPanels(payload);
  }

  function refreshPanels(payload) {
    var data = payload.data || {};
    var panels = document.querySelectorAll("[data-live-approval]");
    for (var i = 0; i < panels.length; i++) {
      var panel = panels[i];
      var status = panel.getAttribute("data-status");
      // settled: nothing changes it (an approved call not yet started: a stop still cancels it)
      if (status !== "pending" && !(status === "approved" && panel.hasAttribute("data-not-started"))) continue;
      if (panel.querySelector(".htmx-request")) continue;                // our own decision is on its way
      var id = panel.getAttribute("data-live-approval");
      var named = data.approval_id === id ||
        (Array.isArray(data.approval_ids) && data.approval_ids.indexOf(id) >= 0);
      var sameProject = PANEL_PROJECT_EVENTS[payload.event_type] &&
        String(payload.project_id) === panel.getAttribute("data-project-id");
      var stopped = STOP_EVENTS[payload.event_type] && Array.isArray(data.cancelled_approvals) &&
        data.cancelled_approvals.indexOf(id) >= 0;
      if (named || sameProject) refreshPanel(panel, named && data.status !== "pending" ? data.status
                                                    : stopped ? "cancelled by an emergency stop" : null);
    }
  }

  // A panel is not swapped under someone typing in it (a rejection reason, an amendment): it says
  // that the request changed elsewhere and refreshes when they leave the text box. (Deciding in the
  // meantime is safe: the server refuses a decision on a settled request, and the panel says so.)
  function typingIn(panel) {
    var active = document.activeElement;
    return !!(active && panel.contains(active) && isTyping(active) && active.value);
  }

  var keptText = null;  // {field id: text} typed in a panel whose refresh waited: put back after it

  function refreshPanel(panel, newStatus) {
    if (!typingIn(panel)) {
      if (panel.hasAttribute("data-refresh-pending")) {
        keptText = {};  // what the reviewer changed (an amendment starts as the call's input)
        var fields = panel.querySelectorAll("textarea[id], input[type=text][id]");
        for (var i = 0; i < fields.length; i++) {
          if (fields[i].value !== fields[i].defaultValue) keptText[fields[i].id] = fields[i].value;
        }
        var amend = panel.querySelector("details[open][id]");
        if (amend) keptText["#open"] = amend.id;
      }
      panel.removeAttribute("data-refresh-pending");
      if (window.htmx) window.htmx.trigger(panel, "hitl:refresh");
      return;
    }
    panel.setAttribute("data-refresh-pending", "1");
    var area = panel.querySelector(".outcome-area") || panel;
    var note = panel.querySelector(".outcome-changed");
    if (!note) {
      note = document.createElement("p");
      note.className = "outcome outcome-info outcome-changed";
      area.appendChild(note);
    }
    // its new state when the event says it (another reviewer decided, it timed out, a stop cancelled
    // it), as the question page says it; "changed" for a change of its project (an override decided)
    if (newStatus || !note.textContent) {
      note.textContent = (newStatus ? "This request is now " + String(newStatus).replace(/_/g, " ")
        : "This request changed elsewhere") + ": the panel shows its new state when you leave the text box " +
        "(a decision sent from its buttons meanwhile is answered for that new state).";
    }
  }

  // Leaving the box for one of the panel's buttons (Reject, Approve): the click goes through (the
  // server answers for a request settled meanwhile); a refresh now would swallow it. Some browsers
  // do not focus a clicked button, hence the pointer too.
  var pressingUntil = 0;
  document.addEventListener("pointerdown", function (evt) {
    var button = evt.target && evt.target.closest && evt.target.closest("button");
    if (button && button.closest("[data-live-approval][data-refresh-pending]")) pressingUntil = Date.now() + 1000;
  }, true);

  document.addEventListener("focusout", function (evt) {
    var to = evt.relatedTarget;
    if (to && to.tagName === "BUTTON" && to.closest && to.closest("[data-live-approval][data-refresh-pending]")) return;
    if (Date.now() < pressingUntil) return;
    setTimeout(function () {
      var pending = document.querySelectorAll("[data-live-approval][data-refresh-pending]");
      for (var i = 0; i < pending.length; i++) {
        // our own decision on its way: its answer replaces the panel (a refresh would race it)
        if (pending[i].querySelector(".htmx-request") || pending[i].classList.contains("htmx-request")) continue;
        if (!typingIn(pending[i])) refreshPanel(pending[i]);
      }
    }, 0);
  });

  document.addEventListener("htmx:afterSwap", function (evt) {
    var target = evt.detail && evt.detail.target;
    if (!keptText || !target || !target.hasAttribute || !target.hasAttribute("data-live-approval")) return;
    var kept = keptText;
    keptText = null;
    Object.keys(kept).forEach(function (id) {  // the refreshed panel's field, if it still takes text
      if (id === "#open") {
        var details = document.getElementById(kept[id]);
        if (details && !details.hasAttribute("disabled")) details.open = true;
        return;
      }
      var field = document.getElementById(id);
      if (field && !field.disabled && field.value === field.defaultValue) field.value = kept[id];
    });
  });

  // ---- drafts: what a reviewer typed in a decision panel outlives a lost session --------------
  // Saved in the tab's sessionStorage as they type (per page and field). A session that ended before
  // the form was sent sends them through the login page, which comes back without the text (or the
  // page is reloaded to sign in again); a pending panel puts it back into its box, untouched since
  // the server rendered it, and says so. A settled panel (decided here or elsewhere) drops them.
  // review/static/review/drafts.js holds them (and drops them all at Log out, here and in the admin).
  // Without it (blocked, not loaded) no drafts are kept, and the live events still run.
  var drafts = window.hitlDrafts || { PREFIX: "hitl-draft:", drop: function () {}, store: function () { return null; } };
  var DRAFT_PREFIX = drafts.PREFIX, dropDrafts = drafts.drop, draftStore = drafts.store;

  // Whose they are: another reviewer signing in on this tab never gets them back.
  function draftKey(field) {
    return DRAFT_PREFIX + (document.body.getAttribute("data-user-id") || "") + ":" + window.location.pathname +
      "#" + field.id;
  }

  document.addEventListener("input", function (evt) {
    var field = evt.target;
    var store = draftStore();
    if (!store || !field || field.tagName !== "TEXTAREA" || !field.id || !field.closest) return;
    var panel = field.closest("#decision-panel");
    if (!panel || panel.getAttribute("data-status") !== "pending") return;
    try {
      if (field.value && field.value !== field.defaultValue) store.setItem(draftKey(field), field.value);
      else store.removeItem(draftKey(field));
    } catch (e) { /* storage full: the box keeps the text */ }
  });

  function restoreDrafts() {
    var store = draftStore();
    var mine = DRAFT_PREFIX + (document.body.getAttribute("data-user-id") || "") + ":";
    dropDrafts(function (key) { return key.indexOf(mine) === 0; });
    var panel = document.getElementById("decision-panel");
    if (!store || !panel) return;
    var fields = panel.querySelectorAll("textarea[id]");
    var pending = panel.getAttribute("data-status") === "pending";
    var restored = false;
    for (var i = 0; i < fields.length; i++) {
      var text = store.getItem(draftKey(fields[i]));
      if (text === null) continue;
      if (!pending) { store.removeItem(draftKey(fields[i])); continue; }
      if (!fields[i].disabled && fields[i].value === fields[i].defaultValue && text !== fields[i].value) {
        fields[i].value = text;
        restored = true;
      }
    }
    if (restored) {
      var details = panel.querySelectorAll("details");  // an amend editor holding it opens
      for (var j = 0; j < details.length; j++) {
        var box = details[j].querySelector("textarea[id]");
        if (box && box.value !== box.defaultValue) details[j].open = true;
      }
      var area = panel.querySelector(".outcome-area") || panel;
      var note = document.createElement("p");
      note.id = "draft-restored";
      note.className = "outcome outcome-info";
      note.textContent = "What you typed here before is back in its box: nothing was sent yet.";
      area.appendChild(note);
    }
  }

  // htmx wires a swapped block's forms only at its settle, 20 ms after the swap: a press in between
  // (Enter on a button just focused, as the list was read again) posted the form without htmx, and
  // the page reloaded. They are wired at the swap (htmx.process: the settle's own pass then finds
  // them done).
  // (Not a block swapped whole, outerHTML, as a decision panel: wired at once, the panel took the
  // refresh that its own decision's event asks for at once too, and the outcome the reviewer was
  // just told, and focused on, was replaced.)
  document.addEventListener("htmx:afterSwap", function (evt) {
    var target = evt.detail && evt.detail.target;
    if (window.htmx && target && document.contains(target)) window.htmx.process(target);
  });

  document.addEventListener("htmx:afterSwap", function () {  // a panel settled by its own decision
    var panel = document.getElementById("decision-panel");
    if (panel && panel.getAttribute("data-status") !== "pending") restoreDrafts();
  });

  function connect() {
    if (live.closedByUs) return;
    var url = socketUrl();
    if (!url || !("WebSocket" in window)) return;
    var socket;
    try {
      socket = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    live.socket = socket;
    // "Connecting…" only for the first attempt: between reconnects the status stays "Reconnecting…"
    // (a polite live region: alternating the two read out every attempt while a server restarted)
    var status = document.getElementById("live-status");
    if (!status || status.getAttribute("data-state") !== "reconnecting") setStatus("connecting", "Connecting…");
    var openedAt = null;
    socket.onopen = function () {
      openedAt = Date.now();
      setStatus("live", "Live");
      armWatchdog();
      // The banners are read again once the stream is open: what changed while it was down comes
      // over it too (a stream of every project resumes after the highest id seen: the server sends
      // an event only once every lower id is settled), but a banner must not wait for the events
      // of a long drop to be replayed.
      document.body.dispatchEvent(new CustomEvent("hitl:banners", { bubbles: true }));
    };
    socket.onmessage = function (message) {
      armWatchdog();
      var payload;
      try { payload = JSON.parse(message.data); } catch (e) { return; }
      if (Array.isArray(payload)) { payload.forEach(handle); } else { handle(payload); }
    };
    socket.onclose = function (event) {
      clearTimeout(live.watchdog);
      if (live.socket === socket) live.socket = null;
      // The server ended the stream because its access ended (it checks at every heartbeat):
      // reconnecting would only be refused, so say why and stop.
      if (event && event.code === 4401) { setStatus("ended", "Signed out: reload to sign in"); return; }
      if (event && event.code === 4403) { setStatus("ended", "No longer allowed here: reload"); return; }
      // The server refused the resume point (no event has had that id: a restored database, say):
      // the same reconnect would be refused again, and the page is out of step with it.
      if (event && event.code === 4400) { setStatus("ended", "Out of step with the server: reload"); return; }
      // The backoff starts again only after a connection that lasted: one that the server drops
      // right after opening (a server in trouble) must not be reopened every half second.
      if (openedAt !== null && Date.now() - openedAt >= STABLE_MS) live.attempt = 0;
      if (!live.closedByUs) scheduleReconnect();
    };
    socket.onerror = function () { /* onclose follows and reconnects */ };
  }

  function startLive() {
    var initial = document.body.getAttribute("data-last-event-id");
    if (initial && /^\d+$/.test(initial)) live.lastId = live.initialId = parseInt(initial, 10);
    connect();
    window.addEventListener("pagehide", function () {
      live.closedByUs = true;
      if (live.socket) live.socket.close();
    });
    window.addEventListener("pageshow", function (e) {
      if (e.persisted) { live.closedByUs = false; if (!live.socket) connect(); }
    });
  }

  // ---- the inbox: don't pull the list from under someone typing in it ----------------------
  function isTyping(target) {
    if (!target) return false;
    var tag = target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || target.isContentEditable;
  }

  // ... nor from under the pointer or the focus on a row's decision buttons: the rows move when
  // the list is read again, and a click meant for one override landed on the next one's button.
  var HELD = ".override-actions:hover, .override-actions:focus-within";

  function holdsTheList(inbox) {
    var active = document.activeElement;
    return (isTyping(active) && inbox.contains(active) && active.value) || !!inbox.querySelector(HELD);
  }

  document.addEventListener("htmx:confirm", function (evt) {
    var elt = evt.detail && evt.detail.elt;
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-inbox")) return;  // the list's own refresh (event or poll)
    var held = document.getElementById("inbox-held");
    if (holdsTheList(elt)) {
      evt.preventDefault();  // refresh once the person leaves the field or the buttons, and say so meanwhile
      elt.setAttribute("data-refresh-pending", "1");
      if (held) held.hidden = false;
    } else if (held) {
      held.hidden = true;
    }
  });

  function refreshIfLeft(evt) {
    var inbox = document.querySelector("[data-inbox][data-refresh-pending]");
    if (!inbox || !inbox.contains(evt.target)) return;
    setTimeout(function () {
      if (holdsTheList(inbox)) return;
      inbox.removeAttribute("data-refresh-pending");
      if (window.htmx) window.htmx.trigger(document.body, "hitl:inbox", {});
    }, 0);
  }
  document.addEventListener("focusout", refreshIfLeft);
  document.addEventListener("mouseout", refreshIfLeft);

  // ---- events gathered into reads: one per gap at most, however many events come -------------
  // Every event read the whole inbox list again (up to 200 rows, about 180 KB and 70 to 120 ms of
  // the server's CPU each), and the project and recovery pages read themselves whole: 40 open inboxes
  // with agents asking once a second took 90 % of a core and made the agents' own requests 5 to 10
  // times slower. ``gatherer(read, gap)`` gathers the events of a burst: ``read`` runs 300 ms after
  // the first, then at most once per ``gap`` ms after the last read was answered (``answered()``),
  // so the last event of a burst is never left out; not while the tab is hidden (once when it shows
  // again). The project and recovery pages use it too (window.hitlGatherer).
  // A read the server was slow to answer widens the gap to ten times its time (at most 30 s, the
  // poll's): a reviewer of every project with 15,000 items pending waited 0.2 to 1 s for each read,
  // and three such inboxes open made the agents' requests 5 to 13 times slower on two cores.
  function gatherer(read, gap) {
    var readAt = 0, timer = null, missed = false, wait = gap;
    function run() {
      timer = null;
      if (document.hidden) { missed = true; return; }
      readAt = Date.now();
      read();
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && missed && !timer) { missed = false; run(); }
    });
    return {
      event: function () {  // a read already due covers this event too
        if (!timer) timer = setTimeout(run, Math.max(300, readAt + wait - Date.now()));
      },
      answered: function (took) {  // the gap starts at the answer
        readAt = Date.now();
        if (typeof took === "number" && took >= 0) wait = Math.max(gap, Math.min(30000, 10 * took));
        if (timer) {  // an event that came during the read: its read waits the gap from this answer
          clearTimeout(timer);
          timer = setTimeout(run, wait);
        }
      }
    };
  }
  window.hitlGatherer = gatherer;

  // the inbox list: one read per 2 s at most (its own 30 s poll is unchanged)
  var inboxReads = gatherer(function () {
    document.body.dispatchEvent(new CustomEvent("hitl:inbox", { bubbles: true }));
  }, 2000);
  document.addEventListener("hitl:event", function () {
    if (document.querySelector("[data-inbox]")) inboxReads.event();
  });
  var inboxReadStarted = 0;
  document.addEventListener("htmx:beforeRequest", function (evt) {
    var elt = evt.detail && evt.detail.elt;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-inbox")) inboxReadStarted = Date.now();
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var elt = evt.detail && evt.detail.elt;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-inbox")) {
      inboxReads.answered(inboxReadStarted ? Date.now() - inboxReadStarted : undefined);
    }
  });

  // ---- what changed, said to screen readers --------------------------------------------------
  // A region swapped in whole is not read out (it is a new live region), and the inbox list is not
  // one: <div id="live-announce" aria-live="polite"> (base.html, outside every swapped block) says
  // what changed: requests that arrived in the inbox, a decision panel's new state after it changed
  // elsewhere, the last minute before a request on screen times out.
  function say(text) {
    var region = document.getElementById("live-announce");
    if (!region || !text) return;
    region.textContent = "";
    setTimeout(function () { region.textContent = text; }, 50);  // the same words twice are read twice
  }

  var listBefore = null;   // the inbox's item keys before its swap
  var panelBefore = null;  // a decision panel's status before its refresh

  function inboxKeys() {
    var keys = {};
    var items = document.querySelectorAll("#inbox-list > .item[data-key]");
    for (var i = 0; i < items.length; i++) keys[items[i].getAttribute("data-key")] = 1;
    return keys;
  }

  document.addEventListener("htmx:beforeSwap", function (evt) {
    var target = evt.detail && evt.detail.target;
    if (!target || !target.hasAttribute) return;
    if (target.hasAttribute("data-inbox")) listBefore = inboxKeys();
    if (target.id === "decision-panel") panelBefore = target.getAttribute("data-status");
  });

  document.addEventListener("htmx:afterSettle", function (evt) {
    var d = evt.detail || {}, target = d.target;
    if (!target) return;
    var verb = d.requestConfig ? String(d.requestConfig.verb).toLowerCase() : "get";
    if (target.hasAttribute && target.hasAttribute("data-inbox") && listBefore) {
      var before = listBefore, now = inboxKeys(), added = 0, total = 0;
      listBefore = null;
      for (var key in now) { total += 1; if (!before[key]) added += 1; }
      if (added) say(added + " new request" + (added > 1 ? "s" : "") + " in the inbox, " + total + " listed.");
    }
    if (target.id === "decision-panel" && verb === "get") {
      var panel = document.getElementById("decision-panel"), was = panelBefore;
      panelBefore = null;
      var state = panel && panel.querySelector(".state");
      if (panel && was && panel.getAttribute("data-status") !== was && state) {
        say("This request changed: " + state.textContent.replace(/\s+/g, " ").trim());
      }
    }
  });

  // ---- the focus outlives live refreshes -------------------------------------------------------
  // A live refresh replaces a block (the inbox list, a decision panel, the project and recovery
  // pages): the element that had the focus went with it, the focus fell to the page's body and the
  // next Tab started from the top. The focused element is remembered before the swap (its id, or its
  // kind, address, name, value and words with its row's key) and its like in the new block gets
  // the focus back; gone (the item left the list, the request was decided elsewhere) the focus goes
  // to what replaced it: a panel's new state (read out), else the block itself. Not for a decision's
  // own answer (a POST: the focus goes to its outcome, below).
  var swapFocus = {};  // block id -> what had the focus in it when its swap began
  var lastListFocus = null;  // the inbox list's: for its selection (j / k), below

  function rowKey(el) {
    var row = el.parentElement && el.parentElement.closest("[data-key], [id]");
    return row ? (row.getAttribute("data-key") || "#" + row.id) : "";
  }

  function focusable(el) {
    return el && !el.disabled && el.getAttribute("aria-disabled") !== "true" && !el.closest("[hidden]");
  }

  function likeOf(memo) {
    if (memo.id) {
      var same = document.getElementById(memo.id);
      return focusable(same) ? same : null;
    }
    var found = null, count = 0;
    var all = document.querySelectorAll(memo.tag);
    for (var i = 0; i < all.length; i++) {
      var el = all[i];
      if (el.getAttribute("href") !== memo.href || el.getAttribute("name") !== memo.name ||
          el.getAttribute("value") !== memo.value || (el.textContent || "").trim() !== memo.text) continue;
      if (rowKey(el) === memo.row) return focusable(el) ? el : null;
      found = el;
      count += 1;
    }
    return count === 1 && focusable(found) ? found : null;  // one like it elsewhere: that one
  }

  function focusQuietly(el) {
    if (!el.matches("a[href], button, input, select, textarea, summary, [tabindex]")) el.setAttribute("tabindex", "-1");
    el.focus({ preventScroll: true });
  }

  document.addEventListener("htmx:beforeSwap", function (evt) {
    var d = evt.detail || {}, active = document.activeElement, block = d.target && d.target.id;
    if (!block) return;
    delete swapFocus[block];
    if (d.target.hasAttribute("data-inbox")) lastListFocus = null;
    if (d.requestConfig && String(d.requestConfig.verb).toLowerCase() !== "get") return;
    if (!active || active === document.body || !d.target.contains(active)) return;
    var memo = swapFocus[block] = {
      id: active.id || null, tag: active.tagName, href: active.getAttribute("href"), name: active.getAttribute("name"),
      value: active.getAttribute("value"), text: (active.textContent || "").trim(), row: rowKey(active),
      selectedRow: !!(active.closest(".item.selected") && active.classList.contains("item-link")),
      panel: !!active.closest("#decision-panel"), block: block
    };
    if (d.target.hasAttribute("data-inbox")) lastListFocus = memo;
  });

  document.addEventListener("htmx:afterSettle", function (evt) {
    var block = evt.detail && evt.detail.target && evt.detail.target.id;
    var memo = block && swapFocus[block];
    if (!memo) return;
    delete swapFocus[block];
    var active = document.activeElement;
    if (active && active !== document.body && document.contains(active)) return;  // still somewhere
    var like = likeOf(memo);
    if (like) { like.focus({ preventScroll: true }); return; }
    var panel = memo.panel && document.getElementById("decision-panel");
    var to = (panel && (panel.querySelector(".state") || panel)) || document.getElementById(memo.block);
    if (to) focusQuietly(to);
  });

  // ---- inbox selection (j / k / Enter) -------------------------------------------------------
  var selectedKey = null;

  function inboxItems() {
    return Array.prototype.slice.call(document.querySelectorAll("#inbox-list > .item"));
  }

  function select(item, focus) {
    inboxItems().forEach(function (el) { el.classList.remove("selected"); el.removeAttribute("aria-current"); });
    if (!item) return;
    item.classList.add("selected");
    item.setAttribute("aria-current", "true");
    selectedKey = item.getAttribute("data-key");
    var link = item.querySelector(".item-link");
    if (focus && link) link.focus({ preventScroll: false });
    if (item.scrollIntoView) item.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    var items = inboxItems();
    if (!items.length) return;
    var index = -1;
    for (var i = 0; i < items.length; i++) if (items[i].classList.contains("selected")) index = i;
    var next = index < 0 ? 0 : Math.max(0, Math.min(items.length - 1, index + step));
    select(items[next], true);
  }

  function openSelected() {
    var item = document.querySelector("#inbox-list > .item.selected");
    var link = item && item.querySelector(".item-link");
    if (link) window.location.href = link.getAttribute("href");
  }

  document.addEventListener("htmx:afterSettle", function (evt) {
    // keep the selection (and focus) across live refreshes of the list; after htmx's settle, which
    // puts each row's new class back (rows keep their ids) and so took a selection made on swap away
    var target = evt.detail && evt.detail.target;
    if (!target || !target.querySelector || !target.querySelector("#inbox-list, .empty")) return;
    if (!selectedKey) return;
    // the selected row's link gets the focus back if it had it (or nothing had it); a link of
    // another row that had it got it back above, and keeps it
    var memo = lastListFocus;
    lastListFocus = null;
    var hadFocus = memo ? memo.selectedRow : document.activeElement === document.body;
    var items = inboxItems();
    for (var i = 0; i < items.length; i++) {
      if (items[i].getAttribute("data-key") === selectedKey) { select(items[i], hadFocus); return; }
    }
  });

  // ---- refused htmx posts --------------------------------------------------------------------
  // htmx swaps nothing for a 4xx/5xx answer: say so where the decision's outcome would show.
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail && evt.detail.xhr, elt = evt.detail && evt.detail.elt;
    if (!xhr || !elt || !elt.closest) return;
    var panel = elt.closest("#decision-panel");
    var area = (panel && panel.querySelector(".outcome-area")) || document.getElementById("inbox-outcome");
    if (!area) return;
    if (xhr.status === 401) signedOut();  // the session ended: the note below says so too
    var plain = (xhr.getResponseHeader("Content-Type") || "").indexOf("text/plain") === 0;
    var note = document.createElement("p");
    note.className = "outcome outcome-error";
    note.textContent = plain && xhr.responseText ? xhr.responseText.slice(0, 500)
      : "The server refused this (HTTP " + xhr.status + "). Nothing was decided: reload the page.";
    area.replaceChildren(note);
  });

  // ---- decision shortcuts ------------------------------------------------------------------
  // Single-letter keys can be turned off (WCAG 2.1.4; speech input types letters): the top bar's
  // "Shortcuts" button, remembered in this browser (localStorage "hitl-shortcuts" = "off").
  var SHORTCUTS_KEY = "hitl-shortcuts";

  function shortcutsOn() {
    try { return window.localStorage.getItem(SHORTCUTS_KEY) !== "off"; } catch (e) { return true; }
  }

  function showShortcuts() {
    var on = shortcutsOn();
    document.body.classList.toggle("shortcuts-off", !on);
    var button = document.getElementById("shortcuts-toggle");
    if (!button) return;
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.textContent = on ? "Shortcuts on" : "Shortcuts off";
  }

  document.addEventListener("click", function (evt) {
    var button = evt.target && evt.target.closest && evt.target.closest("#shortcuts-toggle");
    if (!button) return;
    try { window.localStorage.setItem(SHORTCUTS_KEY, shortcutsOn() ? "off" : "on"); } catch (e) { return; }
    showShortcuts();
  });

  var approveArmed = null;  // {panel, at}: a first "a" on a high or critical risk
  var CONFIRM_MS = 5000;    // how long that first "a" waits for the second

  function enabled(el) { return el && !el.disabled && el.getAttribute("aria-disabled") !== "true"; }

  function announce(panel, text) {
    var area = panel.querySelector(".outcome-area");
    if (!area) return;
    var note = area.querySelector(".outcome-confirm");
    if (!note) {
      note = document.createElement("p");
      note.className = "outcome outcome-info outcome-confirm";
      area.appendChild(note);
    }
    note.textContent = text;
  }

  function focusField(id) {
    var field = document.getElementById(id);
    if (!enabled(field)) return false;
    field.focus();
    if (field.scrollIntoView) field.scrollIntoView({ block: "center" });
    return true;
  }

  document.addEventListener("keydown", function (evt) {
    if (evt.defaultPrevented) return;
    // Ctrl/Cmd+Enter in a text area submits its form
    if ((evt.ctrlKey || evt.metaKey) && evt.key === "Enter" && evt.target.tagName === "TEXTAREA" && evt.target.form) {
      evt.preventDefault();
      var submit = evt.target.form.querySelector("button[type=submit]");
      if (enabled(submit)) {
        if (evt.target.form.requestSubmit) evt.target.form.requestSubmit(submit); else submit.click();
      }
      return;
    }
    if (evt.ctrlKey || evt.metaKey || evt.altKey || isTyping(evt.target)) return;
    if (!shortcutsOn()) return;  // turned off (the "Shortcuts" button in the top bar)
    if (evt.repeat) return;  // a held key is one keystroke, never a confirmation of itself
    var key = evt.key;
    var inInbox = !!document.getElementById("inbox-list") || !!document.querySelector("[data-inbox]");
    if (inInbox) {
      if (key === "j") { evt.preventDefault(); move(1); return; }
      if (key === "k") { evt.preventDefault(); move(-1); return; }
      if (key === "Enter" && evt.target === document.body) { evt.preventDefault(); openSelected(); return; }
    }
    var panel = document.getElementById("decision-panel");
    if (!panel) return;
    if (key === "a") {
      var approve = document.getElementById("btn-approve");
      if (!enabled(approve)) return;
      evt.preventDefault();
      // No call or output is approved by one keystroke (a stray "a" on a link, a speech command):
      // the first "a" focuses Approve and says so, a second "a" within 5 s (or Enter on the button)
      // approves; the hint names the risk when it is high or critical.
      if (!(approveArmed && approveArmed.panel === panel && Date.now() - approveArmed.at < CONFIRM_MS)) {
        var before = document.activeElement;
        var armed = approveArmed = { panel: panel, at: Date.now() };
        approve.focus();
        var risk = panel.getAttribute("data-confirm-approve");
        announce(panel, (risk ? "Risk " + risk + ": press" : "Press") + " a again (or Enter) to approve.");
        setTimeout(function () {  // the window closed: the hint goes, and the focus goes back where it was
          if (approveArmed !== armed) return;  // that "a" set (else a later Enter would still approve)
          approveArmed = null;
          var note = panel.querySelector(".outcome-confirm");
          if (note) note.remove();
          if (document.activeElement !== approve) return;
          if (before && before !== document.body && before !== approve && document.contains(before)) {
            before.focus();
          } else {  // not left on the page's body (Tab would start again from the top)
            if (!panel.hasAttribute("tabindex")) panel.setAttribute("tabindex", "-1");
            panel.focus();
          }
        }, CONFIRM_MS);
        return;
      }
      approveArmed = null;
      approve.click();
    } else if (key === "e") {
      var amend = document.getElementById("amend");
      if (amend && enabled(document.getElementById("amend-summary"))) {
        evt.preventDefault();
        amend.open = true;  // a closed <details> hides its text area from focus
        focusField("amended-input");
      }
    } else if (key === "r") {
      if (focusField("reject-reason")) evt.preventDefault();
    } else if (key === "m") {
      if (focusField("modifications")) evt.preventDefault();
    }
  });

  // ---- after a decision, the focus goes to what it did ---------------------------------------
  // The decision panel is swapped whole by the decision's answer: the focus fell to the page's
  // body (a keyboard user started again from the top) and the outcome, a new node already filled,
  // was often not read by screen readers. It is focused instead (read out, and Tab goes on from it).
  // The same for an override decided in the inbox: the list is read again with its answer and the
  // button pressed went with it (the focus fell to the body); its outcome above the list gets it.
  document.addEventListener("htmx:afterSettle", function (evt) {
    var d = evt.detail || {};
    if (!d.requestConfig || String(d.requestConfig.verb).toLowerCase() !== "post") return;
    if (d.target && d.target.id === "inbox-live") {
      var active = document.activeElement;
      if (active && active !== document.body && document.contains(active)) return;  // still somewhere
      var said = document.querySelector("#inbox-outcome .outcome") || d.target;
      said.setAttribute("tabindex", "-1");
      said.focus({ preventScroll: true });
      return;
    }
    if (!d.target || d.target.id !== "decision-panel") return;
    var panel = document.getElementById("decision-panel");
    var invalid = panel && panel.querySelector("[aria-invalid=true]");
    if (invalid && !invalid.disabled) { invalid.focus(); return; }  // refused: the field to mend
    var note = panel && panel.querySelector(".outcome-area .outcome");
    if (!note) return;
    note.setAttribute("tabindex", "-1");
    note.focus();
  });

  // ---- an edited input is not dropped by the plain Approve ------------------------------------
  // Approve (its button, or "a") runs the agent's input as it was asked; with an edit typed in the
  // amendment's editor it approved that original and threw the edit away without a word. Now the
  // first press says so; a second within 5 s approves the original anyway.
  var plainArmed = null;
  document.addEventListener("click", function (evt) {
    var approve = evt.target && evt.target.closest && evt.target.closest("#btn-approve");
    var edited = document.getElementById("amended-input");
    // told from the agent's input (data-original), not the box's first text: an amendment the
    // server refused comes back typed in the box, and Approve then dropped it unasked
    var original = edited && edited.hasAttribute("data-original") ? edited.getAttribute("data-original") : edited && edited.defaultValue;
    if (!approve || !edited || edited.value.trim() === String(original).trim()) return;
    var panel = approve.closest("#decision-panel");
    if (plainArmed && plainArmed.panel === panel && Date.now() - plainArmed.at < CONFIRM_MS) {
      plainArmed = null;
      return;
    }
    evt.preventDefault();
    evt.stopImmediatePropagation();
    plainArmed = { panel: panel, at: Date.now() };
    if (panel) announce(panel, "You edited the input: Approve runs the agent's original input and drops your edit. " +
                        "Use Approve amended input, or press Approve again within 5 s to approve the original.");
  }, true);

  // ---- countdowns ("4 min 5 s left") ---------------------------------------------------------
  // Each [data-expires] deadline counts down every second, on the server's clock (its time when
  // the page was rendered, <body data-server-now>, against this browser's), as the server words it
  // (review.selectors.duration_display); under five minutes left it turns red, as the server marks it.
  var clockOffset = 0;  // server time minus this browser's, in ms
  var warned = {};      // deadlines whose last minute was said

  function durationText(seconds) {
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }

  function tickCountdowns() {
    var now = Date.now() + clockOffset;
    var spans = document.querySelectorAll(".time-left[data-expires]");
    for (var i = 0; i < spans.length; i++) {
      var at = Date.parse(spans[i].getAttribute("data-expires"));
      if (isNaN(at)) continue;
      var left = Math.round((at - now) / 1000);
      var text = left <= 0 ? "expired" : durationText(left) + " left";
      if (spans[i].textContent !== text) spans[i].textContent = text;
      if (left < 300) spans[i].classList.add("urgent");
      // per countdown, not per deadline: the page head's countdown of the same request ran out first and
      // took the panel's turn (found on a real server with beat stopped: the panel never read itself)
      if (left > 0) spans[i].hitlCounting = true;
      else if (left <= -1 && spans[i].hitlCounting) { spans[i].hitlCounting = false; deadlinePassed(spans[i]); }
      // the request on screen (a decision page's own): its last minute is said once
      if (left <= 60 && left > 0 && !warned[spans[i].getAttribute("data-expires")] && spans[i].closest("#decision-panel")) {
        warned[spans[i].getAttribute("data-expires")] = 1;
        say("One minute left to decide before this request times out.");
      }
    }
  }

  // A countdown that ran out on screen reads what it counts down to again: the server times out what
  // is due when it is read, so the page follows the deadline even while beat is late or down (no
  // event comes then: the call page kept Approve enabled under "expired", the inbox kept the row).
  function deadlinePassed(span) {
    var panel = document.getElementById("decision-panel");
    if (span.closest("#inbox-list")) { inboxReads.event(); return; }
    if (!panel || panel.getAttribute("data-status") !== "pending") return;
    if (panel.hasAttribute("data-live-approval") && panel.contains(span)) { refreshPanel(panel, "timed_out"); return; }
    var question = panel.getAttribute("data-live-hitl");
    if (question) {  // the question page reloads on its request's event (not under typing)
      document.body.dispatchEvent(new CustomEvent("hitl:event", { bubbles: true, detail: {
        event_type: "deadline_passed", project_id: panel.getAttribute("data-project-id"),
        data: { hitl_request_id: question, status: "timed_out" } } }));
    }
  }

  function startCountdowns() {
    var rendered = parseInt(document.body.getAttribute("data-server-now") || "", 10);
    if (!isNaN(rendered)) clockOffset = rendered * 1000 - Date.now();
    setInterval(tickCountdowns, 1000);
  }

  // A page that a form's post led to (a question answered, a stop, a recovery step): its outcome or
  // the field to mend gets the focus (it was on the page's top, the outcome already there when the
  // page loaded and so not read out, and each step meant tabbing through the top bar again).
  // Messages are shown once, after an action: a page opened plainly has none.
  function focusOutcome() {
    var main = document.getElementById("main");
    if (!main) return;
    var invalid = main.querySelector("[aria-invalid=true]:not([disabled])");
    if (invalid) { invalid.focus(); return; }
    var said = main.querySelector(".pp-messages .pp-msg, #decision-panel .outcome-area .outcome, #inbox-outcome .outcome");
    if (said) focusQuietly(said);
  }

  function start() {
    showShortcuts();
    focusOutcome();
    restoreDrafts();
    startLive();
    startCountdowns();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
