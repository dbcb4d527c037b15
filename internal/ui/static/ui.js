// tandem web UI: live parts over one server-sent-event stream, the job
// list's filters without reloads, and the log panel. No framework: see
// docs/UI.md. Served under a Content-Security-Policy that forbids inline
// script, so everything is bound here, by event delegation.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);

  // ---- Live parts -------------------------------------------------------
  let source = null;
  function liveStatus(text) { const s = $("live-status"); if (s && s.textContent !== text) s.textContent = text; }

  // keepState carries what the user did to old (checked boxes, chosen
  // options, focus) over to its replacement.
  function keepState(old, neu) {
    old.querySelectorAll("input[type=checkbox], input[type=radio]").forEach((i) => {
      if (!i.id) return;
      const m = neu.querySelector("#" + CSS.escape(i.id)) || (neu.id === i.id ? neu : null);
      if (m) m.checked = i.checked;
    });
    old.querySelectorAll("select").forEach((s) => {
      if (!s.id) return;
      const m = neu.querySelector("#" + CSS.escape(s.id));
      if (m && [...m.options].some((o) => o.value === s.value)) m.value = s.value;
    });
    old.querySelectorAll("details[open]").forEach((d) => {
      const m = d.id && neu.querySelector("#" + CSS.escape(d.id));
      if (m) m.open = true;
    });
  }

  function applyPart(p) {
    const tpl = document.createElement("template");
    tpl.innerHTML = p.html.trim();
    const el = tpl.content.firstElementChild;
    if (!el) return;
    const old = $(p.id);
    if (old) {
      const focused = old.contains(document.activeElement) ? document.activeElement.id : "";
      keepState(old, el);
      old.replaceWith(el);
      if (focused && $(focused)) $(focused).focus();
    } else if (p.parent && $(p.parent)) {
      $(p.parent).appendChild(el);
    }
  }

  function applyOrder(parent, ids) {
    const c = $(parent);
    if (!c) return;
    const want = new Set(ids);
    [...c.children].forEach((el) => { if (!want.has(el.id)) el.remove(); });
    ids.forEach((id) => { const el = $(id); if (el && el.parentNode === c) c.appendChild(el); });
  }

  function connect(url) {
    if (source) source.close();
    source = null;
    if (!url || !window.EventSource) return;
    const server = document.body.dataset.server || "this server";
    source = new EventSource(url);
    source.addEventListener("open", () => liveStatus("Live updates: on, from " + server + "."));
    source.addEventListener("parts", (e) => {
      const ev = JSON.parse(e.data);
      ev.parts.forEach(applyPart);
      Object.entries(ev.order || {}).forEach(([parent, ids]) => applyOrder(parent, ids));
      liveStatus("Live updates: on, from " + ev.server + ", at revision " + ev.rev + ".");
      document.dispatchEvent(new CustomEvent("tandem:parts"));
    });
    source.addEventListener("gone", (e) => {
      liveStatus("Live updates stopped: " + JSON.parse(e.data).error);
      source.close();
    });
    source.addEventListener("error", () => {
      if (source && source.readyState === EventSource.CLOSED) return;
      liveStatus("Live updates: lost contact with " + server + "; reconnecting…");
    });
  }

  // ---- List filters (jobs, workflow runs): the URL and the list change,
  // the page stays. The form's data-replace names the elements replaced. ----
  function filterForm() { return document.querySelector("form.filters"); }
  async function applyFilters(url, push) {
    try {
      const resp = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (!resp.ok) { window.location.href = url; return; }
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const f = filterForm();
      ((f && f.dataset.replace) || "jobs-count jobs-rows").split(" ").forEach((id) => {
        const n = doc.getElementById(id), o = $(id);
        if (n && o) o.replaceWith(document.importNode(n, true));
      });
      const np = doc.querySelector(".paging"), op = document.querySelector(".paging");
      if (np && op) op.replaceWith(document.importNode(np, true));
      if (push) history.pushState({}, "", url);
      connect(doc.body.dataset.live);
    } catch (e) { window.location.href = url; }
  }
  function formURL(form) {
    const q = new URLSearchParams();
    new FormData(form).forEach((v, k) => { if (String(v).trim() !== "") q.set(k, v); });
    const s = q.toString();
    return form.getAttribute("action") + (s ? "?" + s : "");
  }
  let debounce = null;
  document.addEventListener("submit", (e) => {
    if (e.target === filterForm()) { e.preventDefault(); applyFilters(formURL(e.target), true); }
  });
  document.addEventListener("change", (e) => {
    const f = filterForm();
    if (f && e.target.form === f && e.target.tagName === "SELECT") applyFilters(formURL(f), true);
  });
  document.addEventListener("input", (e) => {
    const f = filterForm();
    if (!f || e.target.form !== f || e.target.type !== "search") return;
    clearTimeout(debounce);
    debounce = setTimeout(() => applyFilters(formURL(f), true), 400);
  });
  window.addEventListener("popstate", () => { if (filterForm()) window.location.reload(); });

  // ---- Log panel ---------------------------------------------------------
  const TAIL = 65536;
  const log = { job: "", attempt: "", start: 0, end: 0, timer: null, gen: 0, decoder: null, done: false };
  function logURL(params) { return "/ui/jobs/" + encodeURIComponent(log.job) + "/log?" + new URLSearchParams(params); }
  function logStatus(t) { const s = $("log-status"); if (s && s.textContent !== t) s.textContent = t; }
  function atBottom(pre) { return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30; }

  // partialChar returns how many bytes at the head of body, a range of
  // the log from byte start, end a UTF-8 character begun before start
  // (continuation bytes, at most 3; none at the log's first byte). The
  // tail and "load earlier" begin where a byte count fell, perhaps inside
  // a character; they skip those bytes (the next "load earlier" shows them,
  // whole), so no range shown begins with half a character.
  function partialChar(body, start) {
    if (start === 0) return 0;
    const b = new Uint8Array(body);
    let i = 0;
    while (i < 3 && i < b.length && (b[i] & 0xc0) === 0x80) i++;
    return i;
  }

  async function logFetch(params) {
    const resp = await fetch(logURL(params), { credentials: "same-origin" });
    const body = await resp.arrayBuffer();
    if (!resp.ok) throw new Error(new TextDecoder().decode(body) || resp.status);
    return { body, start: +resp.headers.get("X-Log-Start"), end: +resp.headers.get("X-Log-End"),
      more: resp.headers.get("X-Log-More") === "1", live: resp.headers.get("X-Log-Live") === "1" };
  }

  async function logLoad() {
    const sel = $("log-attempt-sel"), pre = $("log");
    if (!sel || !pre || !sel.value) return;
    const gen = ++log.gen;
    clearTimeout(log.timer);
    log.attempt = sel.value; log.done = false;
    log.decoder = new TextDecoder();
    pre.textContent = "";
    const raw = $("log-raw");
    if (raw) raw.href = logURL({ attempt: log.attempt, download: "1" });
    try {
      const r = await logFetch({ attempt: log.attempt, tail: TAIL });
      if (gen !== log.gen) return;
      const skip = partialChar(r.body, r.start);
      log.start = r.start + skip; log.end = r.end;
      // One decoder for the tail and every byte followed after it: a
      // character split between two answers shows whole.
      pre.textContent = log.decoder.decode(new Uint8Array(r.body, skip), { stream: true });
      pre.scrollTop = pre.scrollHeight;
      $("log-earlier").hidden = log.start === 0;
      logStatus(r.live ? "Following attempt " + log.attempt + " (bytes " + log.start + " to " + log.end + ")." : "Attempt " + log.attempt + " has ended; " + log.end + " bytes.");
      log.done = !r.live;
      logFollow(gen, 0);
    } catch (e) {
      logStatus("Log not available yet: " + e.message + " Retrying…");
      log.timer = setTimeout(() => { if (gen === log.gen) logLoad(); }, 2000);
    }
  }

  // logFollow asks for the bytes after the last one shown, and appends
  // only those.
  function logFollow(gen, delay) {
    clearTimeout(log.timer);
    log.timer = setTimeout(async () => {
      if (gen !== log.gen) return;
      const box = $("log-follow");
      if (box && !box.checked) { logFollow(gen, 1000); return; }
      if (log.done) return;
      const pre = $("log");
      try {
        const r = await logFetch({ attempt: log.attempt, offset: log.end });
        if (gen !== log.gen) return;
        if (r.end > log.end) {
          const stick = atBottom(pre);
          pre.append(document.createTextNode(log.decoder.decode(r.body, { stream: true })));
          log.end = r.end;
          if (stick) pre.scrollTop = pre.scrollHeight;
        }
        if (!r.live && !r.more) {
          log.done = true;
          logStatus("Attempt " + log.attempt + " has ended; " + log.end + " bytes.");
          return;
        }
        logStatus("Following attempt " + log.attempt + " (" + log.end + " bytes).");
        logFollow(gen, r.more ? 0 : 1000);
      } catch (e) {
        logStatus("Log follow interrupted (" + e.message + "); retrying…");
        logFollow(gen, 2000);
      }
    }, delay);
  }

  async function logEarlier() {
    const pre = $("log");
    if (log.start === 0) return;
    const from = Math.max(0, log.start - TAIL);
    try {
      const r = await logFetch({ attempt: log.attempt, offset: from, limit: log.start - from });
      // The range ends at log.start, the head of a whole character; it
      // begins at one once partialChar's bytes are skipped.
      const skip = partialChar(r.body, from);
      const h = pre.scrollHeight;
      pre.prepend(document.createTextNode(new TextDecoder().decode(new Uint8Array(r.body, skip))));
      pre.scrollTop += pre.scrollHeight - h;
      log.start = from + skip;
      $("log-earlier").hidden = log.start === 0;
    } catch (e) { logStatus("Could not load earlier bytes: " + e.message); }
  }

  document.addEventListener("change", (e) => {
    if (e.target.id === "log-attempt-sel") logLoad();
    if (e.target.id === "log-follow" && e.target.checked && !log.done) logFollow(log.gen, 0);
  });
  document.addEventListener("click", (e) => { if (e.target.id === "log-earlier") logEarlier(); });
  // A first attempt appearing while the page is open starts the panel.
  document.addEventListener("tandem:parts", () => {
    const sel = $("log-attempt-sel");
    if (sel && sel.value && !log.attempt) logLoad();
    else if (sel && sel.value && log.done && sel.value !== log.attempt) { /* the user picks */ }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const sec = document.querySelector("section.logs");
    if (sec) { log.job = sec.dataset.job; logLoad(); }
    connect(document.body.dataset.live);
  });
})();
