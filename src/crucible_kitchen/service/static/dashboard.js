// The kitchen's dashboard: runs, a start form, and live charts of the selected run.
// Every URL is relative to the page, so the kitchen may be mounted under any prefix.
// The event stream is read with fetch (not EventSource) so that it carries the bearer token.
"use strict";

const TOKEN_KEY = "crucible-kitchen.token";
const RUNS_REFRESH_MS = 2000;
const RECONNECT_MS = 1000;
const SERIES = [
  { key: "loss", stroke: "#2f6fdf" },
  { key: "reward", stroke: "#1f8a4c" },
  { key: "lr", stroke: "#b7791f" },
];

const $ = (id) => document.getElementById(id);
const state = { selected: null, follow: null, charts: {}, data: {}, drawPending: false };

function authHeaders(extra = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = [problem.detail || problem.title || detail, ...(problem.errors || [])].join("\n");
    } catch (_) { /* not a problem document */ }
    throw new Error(detail);
  }
  return response.json();
}

function notify(message) {
  const notice = $("notice");
  notice.textContent = message || "";
  notice.hidden = !message;
}

// ------------------------------------------------------------------ recipes and the start form

async function loadRecipes() {
  const listing = await api("recipes");
  const recipe = $("recipe");
  recipe.replaceChildren(...listing.recipes.map((r) => {
    const option = new Option(r.name, r.name);
    option.title = r.description;
    option.dataset.adapters = r.adapters;
    return option;
  }));
  const sets = listing.adapter_sets || [...new Set(listing.recipes.map((r) => r.adapters))];
  const adapters = $("adapters");
  const choices = listing.adapter_sets ? [] : [new Option("(the recipe's own)", "")];
  adapters.replaceChildren(...choices, ...sets.map((name) => new Option(name, name)));
}

async function startRun(event) {
  event.preventDefault();
  let config;
  try {
    config = JSON.parse($("config").value || "{}");
  } catch (err) {
    notify(`config is not valid JSON: ${err.message}`);
    return;
  }
  const body = { recipe: $("recipe").value, config };
  if ($("adapters").value) body.adapters = $("adapters").value;
  try {
    const run = await api("runs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    notify("");
    await refreshRuns();
    select(run.run_id);
  } catch (err) {
    notify(err.message);
  }
}

// ------------------------------------------------------------------ the runs list

async function refreshRuns() {
  let page = await api("runs");
  if (page.next_offset !== null) {  // newest runs are on the last page
    page = await api(`runs?offset=${Math.max(0, page.total - page.limit)}`);
  }
  const items = page.runs.slice().reverse().map((run) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.runId = run.run_id;
    button.setAttribute("aria-current", String(run.run_id === state.selected));
    const id = document.createElement("code");
    id.textContent = run.run_id;
    id.title = `recipe ${run.recipe || run.workflow}`;
    const status = document.createElement("span");
    status.className = `status ${run.status}`;
    status.textContent = run.status;
    button.append(id, status);
    button.addEventListener("click", () => select(run.run_id));
    const item = document.createElement("li");
    item.append(button);
    return item;
  });
  $("runs").replaceChildren(...items);
  const current = page.runs.find((run) => run.run_id === state.selected);
  if (current) showRun(current);
}

// ------------------------------------------------------------------ the selected run

function showRun(run) {
  $("run-id").textContent = run.run_id;
  $("run-recipe").textContent = run.recipe || run.workflow;
  $("run-status").textContent = run.status;
  $("run-status").className = `status ${run.status}`;
  if (run.status !== "running") $("run-stage").textContent = "—";
  $("cancel").disabled = run.status !== "running";
  const error = $("run-error");
  error.textContent = run.error ? `${run.failed_stage || ""}: ${run.error}` : "";
  error.hidden = !run.error;
}

async function select(runId) {
  if (state.follow) state.follow.abort();
  state.selected = runId;
  $("run").hidden = false;
  $("empty").hidden = true;
  $("run-stage").textContent = "—";
  $("run-step").textContent = "0";
  resetCharts();
  for (const button of document.querySelectorAll("#runs button")) {
    button.setAttribute("aria-current", String(button.dataset.runId === runId));
  }
  let run;
  try {
    run = await api(`runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    notify(err.message);
    return;
  }
  if (state.selected !== runId) return;  // another run was selected meanwhile
  showRun(run);
  state.follow = new AbortController();
  follow(runId, state.follow.signal);
}

async function cancelRun() {
  $("cancel").disabled = true;
  try {
    showRun(await api(`runs/${encodeURIComponent(state.selected)}/cancel`, { method: "POST" }));
  } catch (err) {
    notify(err.message);
  }
}

// ------------------------------------------------------------------ the event stream

function parseFrame(block) {
  const frame = { event: "message", data: "", id: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") frame.data += (frame.data ? "\n" : "") + value;
    else if (field === "event") frame.event = value;
    else if (field === "id") frame.id = Number(value);
  }
  return frame.data ? frame : null;
}

// Reads the run's Server-Sent Events until the final `end` event; after a dropped connection
// it reconnects with Last-Event-ID, so that no event is missed or repeated.
async function follow(runId, signal) {
  let lastId = 0;
  while (!signal.aborted) {
    try {
      const headers = authHeaders(lastId ? { "Last-Event-ID": String(lastId) } : {});
      const response = await fetch(`runs/${encodeURIComponent(runId)}/events`, { headers, signal });
      if (!response.ok) {
        notify(`event stream: ${response.status} ${response.statusText}`);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!frame || signal.aborted) continue;
          if (frame.id !== null) lastId = frame.id;
          if (frame.event === "end") {
            await refreshRuns();
            return;
          }
          onEvent(frame.event, JSON.parse(frame.data));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function onEvent(name, event) {
  if (name.endsWith(".stage.run.start")) {
    $("run-stage").textContent = event.path || event.stage;
  } else if (name.endsWith(".stage.run.stop") || name.endsWith(".stage.run.exception")) {
    $("run-stage").textContent = "—";
  }
  if (typeof event.step !== "number") return;
  const metrics = event.metrics || {};
  const values = {
    loss: event.loss ?? metrics.loss,
    reward: event.reward_mean ?? event.chosen_reward ?? metrics.reward,
    lr: event.lr ?? metrics.lr,
  };
  let plotted = false;
  for (const { key } of SERIES) {
    if (typeof values[key] !== "number") continue;
    state.data[key][0].push(event.step);
    state.data[key][1].push(values[key]);
    plotted = true;
  }
  if (plotted) {
    $("run-step").textContent = String(event.step + 1);
    scheduleDraw();
  }
}

// ------------------------------------------------------------------ charts (uPlot)

// Tick labels that stay distinct for learning rates (1e-5) as well as losses (2.31).
function tick(value) {
  const size = Math.abs(value);
  if (value === 0) return "0";
  if (size < 1e-2 || size >= 1e5) return value.toExponential(1);
  return String(Number(value.toPrecision(4)));
}

function chartWidth(figure) {
  return Math.max(240, figure.clientWidth);
}

function resetCharts() {
  for (const { key, stroke } of SERIES) {
    state.data[key] = [[], []];
    const figure = $(`chart-${key}`);
    figure.dataset.points = "0";
    if (state.charts[key]) state.charts[key].destroy();
    state.charts[key] = new uPlot({
      width: chartWidth(figure),
      height: 220,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 64, values: (_, splits) => splits.map(tick) }],
      legend: { show: false },
      series: [{ label: "step" }, { label: key, stroke, width: 2 }],
    }, state.data[key], figure);
  }
}

function scheduleDraw() {
  if (state.drawPending) return;
  state.drawPending = true;
  requestAnimationFrame(() => {
    state.drawPending = false;
    for (const { key } of SERIES) {
      state.charts[key].setData(state.data[key]);
      $(`chart-${key}`).dataset.points = String(state.data[key][0].length);
    }
  });
}

function resizeCharts() {
  for (const { key } of SERIES) {
    const chart = state.charts[key];
    if (chart) chart.setSize({ width: chartWidth($(`chart-${key}`)), height: 220 });
  }
}

// ------------------------------------------------------------------ start

async function refreshAll() {
  try {
    await loadRecipes();
    await refreshRuns();
    notify("");
  } catch (err) {
    notify(err.message);
  }
}

function init() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    refreshAll();
  });
  $("start-form").addEventListener("submit", startRun);
  $("cancel").addEventListener("click", cancelRun);
  window.addEventListener("resize", resizeCharts);
  setInterval(() => refreshRuns().catch(() => {}), RUNS_REFRESH_MS);
  refreshAll();
}

init();
