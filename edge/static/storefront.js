/*
 * boxoffice storefront: the page the POP serves at "/" and "/events/{id}".
 *
 * Plain JavaScript, no build step, nothing loaded from elsewhere (the POP's
 * Content-Security-Policy allows only its own origin). Everything it shows
 * comes from the read API through the same POP:
 *   "/"            events near you: /v1/events?region=R (R from ?region=, else
 *                  the POP's region from /_edge/session)
 *   "/events/{id}" the event (/v1/events/{id}) and live availability: each item
 *                  document (/v1/items/{id}) is polled every POLL_MS. Edge
 *                  reads are advisory, so each figure shows how old it is:
 *                  the larger of the Age header and the time since Date.
 * The user: a demo login sets the HttpOnly bo_user cookie (POST
 * /_edge/demo/login); the page learns who it is from /_edge/session. Consent
 * to personalised prefetching is the bo_consent cookie, opt-in ("on").
 * The service worker (/sw.js) is registered on every page; once it controls
 * the page, and only with a user, consent and no Save-Data, the page asks it
 * to fetch the user's hints and prefetch them. Responses the worker answers
 * from its prefetch cache carry "X-Served-From: prefetch"; the page shows that
 * with a marker: on the event document (#event-source[data-source]) and on
 * item rows (data-first-source="prefetch" on the row).
 */
'use strict';

const POLL_MS = 3000;
const MAX_EVENTS = 20;
const MAX_ITEMS = 40; // polled per page; an event has a handful of items
const CONTROL_WAIT_MS = 10000; // clients.claim() makes the new worker control us almost at once
const CONSENT_COOKIE = 'bo_consent';
const CONSENT_MAX_AGE = 365 * 24 * 3600;

const state = { session: null, prefetched: [], polling: [] };

// -- Small helpers ------------------------------------------------------------

// Builds an element; children are nodes or strings (always text, never HTML).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

// GET through the POP; resolves to {status, body (parsed JSON or null), headers, source, ageSeconds}.
async function read(path) {
  const response = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  return { status: response.status, body, headers: response.headers, source: sourceOf(response),
           ageSeconds: ageOf(response.headers) };
}

// Where an answer came from: the worker's prefetch cache, or the POP (its X-Cache verdict).
function sourceOf(response) {
  if (response.headers.get('X-Served-From') === 'prefetch') return 'prefetch';
  const verdict = (response.headers.get('X-Cache') || '').toLowerCase();
  return verdict ? 'pop-' + verdict : 'pop';
}

// How old the answer is, in seconds: the Age header (time in caches) or the
// time since the origin's Date, whichever is larger; null when neither is there.
function ageOf(headers) {
  const age = Number(headers.get('Age'));
  const date = Date.parse(headers.get('Date') || '');
  const sinceDate = Number.isFinite(date) ? Math.max(0, (Date.now() - date) / 1000) : null;
  const fromAge = Number.isFinite(age) && headers.get('Age') !== null ? age : null;
  if (fromAge === null) return sinceDate;
  return sinceDate === null ? fromAge : Math.max(fromAge, sinceDate);
}

function describeAge(seconds) {
  if (seconds === null) return 'age unknown';
  if (seconds < 1) return 'just now';
  if (seconds < 120) return Math.round(seconds) + ' s old';
  return Math.round(seconds / 60) + ' min old';
}

function money(amount, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(amount / 100);
  } catch (e) {
    return (amount / 100).toFixed(2) + ' ' + currency;
  }
}

function consentCookie() {
  for (const pair of document.cookie.split(';')) {
    const [name, value] = pair.trim().split('=');
    if (name === CONSENT_COOKIE) return value;
  }
  return null;
}

function saveDataOn() {
  const connection = navigator.connection;
  return Boolean((connection && connection.saveData) || (state.session && state.session.save_data));
}

// -- Session: who, consent, login ----------------------------------------------

async function loadSession() {
  const answer = await read('/_edge/session');
  state.session = answer.status === 200 && answer.body ? answer.body : { user_id: null, consent: null };
  renderSession();
}

function renderSession() {
  const session = state.session;
  const user = byId('user');
  user.textContent = session.user_id ? 'user ' + session.user_id : 'not logged in';
  user.dataset.user = session.user_id || '';
  byId('pop').textContent = session.pop || '?';
  byId('consent').checked = consentCookie() === 'on';
  const canLogin = Boolean(session.demo_login);
  byId('user-id').disabled = !canLogin;
  byId('login-button').disabled = !canLogin;
  byId('logout-button').hidden = !session.user_id;
}

async function login(event) {
  event.preventDefault();
  const userId = byId('user-id').value.trim();
  if (!userId) return;
  const response = await fetch('/_edge/demo/login', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user_id: userId }),
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => null);
    byId('user').textContent = 'login failed: ' + ((problem && problem.error && problem.error.message) || response.status);
    return;
  }
  await loadSession();
  askForHints();
}

async function logout() {
  await fetch('/_edge/demo/logout', { method: 'POST', credentials: 'same-origin' });
  clearPrefetch();
  await loadSession();
}

function setConsent() {
  const on = byId('consent').checked;
  document.cookie = `${CONSENT_COOKIE}=${on ? 'on' : 'off'}; Path=/; Max-Age=${CONSENT_MAX_AGE}; SameSite=Lax`;
  if (on) askForHints();
  else clearPrefetch();
}

// -- The service worker ----------------------------------------------------------

function setWorkerState(stateName, text) {
  const node = byId('sw-state');
  node.dataset.state = stateName;
  node.textContent = 'service worker: ' + text;
}

function setPrefetchState(stateName, text, count) {
  const node = byId('prefetch-state');
  node.dataset.state = stateName;
  node.dataset.count = String(count || 0);
  node.textContent = 'prefetch: ' + text;
}

async function startWorker() {
  if (!('serviceWorker' in navigator)) {
    setWorkerState('unsupported', 'not supported here');
    return;
  }
  navigator.serviceWorker.addEventListener('message', onWorkerMessage);
  try {
    await navigator.serviceWorker.register('/sw.js', { scope: '/' });
    await navigator.serviceWorker.ready;
    if (!navigator.serviceWorker.controller) {
      await new Promise((resolve) => {
        navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true });
        setTimeout(resolve, CONTROL_WAIT_MS);
      });
    }
  } catch (e) {
    setWorkerState('failed', 'failed to register (' + e + ')');
    return;
  }
  if (!navigator.serviceWorker.controller) {
    setWorkerState('installed', 'installed, not controlling this page');
    return;
  }
  setWorkerState('controlling', 'controlling this page');
  askForHints();
}

// Ask the worker to fetch this user's hints and prefetch them, when that is wanted.
function askForHints() {
  const controller = navigator.serviceWorker && navigator.serviceWorker.controller;
  if (!controller) return;
  const session = state.session || {};
  if (!session.user_id) {
    setPrefetchState('off', 'off (log in to get hints)');
    return;
  }
  if (consentCookie() !== 'on') {
    setPrefetchState('off', 'off (no consent)');
    return;
  }
  const saveData = saveDataOn();
  setPrefetchState(saveData ? 'save-data' : 'asking', saveData ? 'off (Save-Data)' : 'asking the worker…');
  controller.postMessage({ type: 'bo-refresh-hints', saveData });
}

function clearPrefetch() {
  const controller = navigator.serviceWorker && navigator.serviceWorker.controller;
  if (controller) controller.postMessage({ type: 'bo-clear-prefetch' });
  setPrefetchState('off', 'off');
}

function onWorkerMessage(event) {
  const data = event.data || {};
  if (data.type !== 'bo-hints-refreshed') return;
  state.prefetched = Array.isArray(data.prefetched) ? data.prefetched : [];
  const count = state.prefetched.length;
  if (data.skipped) {
    setPrefetchState(data.skipped === 'save-data' ? 'save-data' : 'off', 'nothing (' + data.skipped + ')', 0);
  } else {
    setPrefetchState('done', count + ' prefetched' + (count ? ': ' + state.prefetched.join(', ') : ''), count);
  }
  const list = byId('prefetched');
  if (list) renderPrefetched(list);
}

function renderPrefetched(list) {
  list.replaceChildren(...state.prefetched.map((path) => el('li', {}, el('code', {}, path))));
}

// -- Pages -----------------------------------------------------------------------

async function renderHome(app) {
  const params = new URLSearchParams(location.search);
  const region = params.get('region') || (state.session && state.session.region) || '';
  const path = '/v1/events?' + (region ? 'region=' + encodeURIComponent(region) + '&' : '') + 'limit=' + MAX_EVENTS;
  const heading = el('h1', {}, region ? `Events near you (${region})` : 'Events');
  app.replaceChildren(heading, el('p', { class: 'muted' }, 'Loading events…'));
  const answer = await read(path);
  if (answer.status !== 200 || !answer.body || !Array.isArray(answer.body.events)) {
    app.replaceChildren(heading, el('p', { class: 'error' }, `The events list is unavailable (${answer.status}).`));
    return;
  }
  const items = answer.body.events.map((event) => el('li', { 'data-event': event.id },
    el('a', { href: '/events/' + encodeURIComponent(event.id) }, event.name),
    el('div', { class: 'meta' }, `${event.artist} · ${event.genre} · ${new Date(event.starts_at).toLocaleString()}`)));
  app.replaceChildren(
    heading,
    el('p', { class: 'muted', id: 'list-age' }, `List ${describeAge(answer.ageSeconds)}, via ${answer.source}.`),
    items.length ? el('ul', { class: 'events' }, ...items) : el('p', {}, 'No events in this region.'),
    el('h2', {}, 'Prefetched for you'),
    el('ul', { id: 'prefetched' }),
  );
  renderPrefetched(byId('prefetched'));
}

async function renderEvent(app, eventId) {
  app.replaceChildren(el('p', { class: 'muted' }, 'Loading the event…'));
  const answer = await read('/v1/events/' + encodeURIComponent(eventId));
  if (answer.status !== 200 || !answer.body || !answer.body.event) {
    app.replaceChildren(el('p', { class: 'error' }, `No such event, or it is unavailable (${answer.status}).`));
    return;
  }
  const { event, venue, items } = answer.body;
  const rows = (items || []).slice(0, MAX_ITEMS).map((item) => el('tr', { 'data-item': item.id },
    el('td', {}, item.name),
    el('td', {}, money(item.price, item.currency)),
    el('td', { class: 'available' }, '…'),
    el('td', { class: 'age' }, ''),
    el('td', { class: 'source' },
      el('span', { class: 'prefetch-marker', hidden: '' }, '⚡ served from prefetch'),
      el('span', { class: 'via' }, ''))));
  app.replaceChildren(
    el('h1', {}, event.name),
    el('p', { class: 'muted' }, `${event.artist} · ${venue ? venue.name + ', ' + venue.city : event.venue_id} · `
      + new Date(event.starts_at).toLocaleString()),
    el('p', { class: 'muted', id: 'event-source', 'data-source': answer.source },
      answer.source === 'prefetch' ? el('span', { class: 'prefetch-marker' }, '⚡ served from prefetch') : null,
      ` Event document ${describeAge(answer.ageSeconds)}, via ${answer.source}.`),
    el('table', { class: 'items' },
      el('thead', {}, el('tr', {}, ...['Ticket', 'Price', 'Available', 'As of', 'Served from'].map((h) => el('th', {}, h)))),
      el('tbody', {}, ...rows)),
  );
  for (const row of rows) pollItem(row, row.dataset.item);
}

async function pollItem(row, itemId) {
  let answer;
  try {
    answer = await read('/v1/items/' + encodeURIComponent(itemId));
  } catch (e) {
    answer = { status: 0, body: null, source: 'network error', ageSeconds: null };
  }
  if (!row.isConnected) return;
  showItem(row, answer);
  state.polling.push(setTimeout(() => pollItem(row, itemId), POLL_MS));
}

function showItem(row, answer) {
  const available = row.querySelector('.available');
  if (answer.status === 200 && answer.body) {
    const item = answer.body;
    available.textContent = item.kind === 'seated'
      ? `${item.available_seats.length} of ${item.seats.length} seats`
      : `${item.available} of ${item.capacity}`;
    available.classList.remove('error');
  } else {
    available.textContent = `unavailable (${answer.status})`;
    available.classList.add('error');
  }
  const age = row.querySelector('.age');
  age.textContent = describeAge(answer.ageSeconds);
  age.classList.toggle('stale', answer.ageSeconds !== null && answer.ageSeconds > 10);
  // The first answer decides the marker: the worker serves a prefetched item once.
  if (!row.dataset.firstSource) {
    row.dataset.firstSource = answer.source;
    row.querySelector('.prefetch-marker').hidden = answer.source !== 'prefetch';
  }
  row.dataset.source = answer.source;
  row.querySelector('.via').textContent = answer.source === 'prefetch' ? '' : answer.source;
}

// -- Start -------------------------------------------------------------------------

async function main() {
  byId('login').addEventListener('submit', login);
  byId('logout-button').addEventListener('click', logout);
  byId('consent').addEventListener('change', setConsent);
  await loadSession();
  const app = byId('app');
  const path = location.pathname;
  const worker = startWorker();
  if (path.startsWith('/events/')) {
    await renderEvent(app, decodeURIComponent(path.slice('/events/'.length)));
  } else {
    await renderHome(app);
  }
  await worker;
  document.body.dataset.ready = 'true';
}

main().catch((e) => {
  byId('app').replaceChildren(el('p', { class: 'error' }, 'The page failed: ' + e));
});
