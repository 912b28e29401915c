/*
 * boxoffice service worker: prefetches the caller's hinted URLs into Cache
 * Storage and serves each of them once from there.
 *
 * Served by the edge POP at /sw.js (scope "/"). Plain JavaScript, no build step.
 *
 * How it works
 * - Hints come from GET /v1/hints (same-origin, with the user's cookie):
 *   {"user_id", "hints": [{"url", "score"}], "expires_at": RFC 3339}.
 * - The list is refreshed when a page posts {type: "bo-refresh-hints",
 *   saveData} and then, for that page's requests, opportunistically on fetch
 *   events at most every HINT_REFRESH_INTERVAL_MS. (A service worker is
 *   stopped when idle, so a timer alone would not run; Periodic Background
 *   Sync needs an installed app.) Activation alone prefetches nothing: until
 *   a page has said it is not under Save-Data (the page sees
 *   navigator.connection.saveData and the POP's view of its Save-Data
 *   header), the worker cannot know, and prefetching first would spend the
 *   very bytes the user asked to save. The worker answers the page with
 *   {type: "bo-hints-refreshed", prefetched: [paths], skipped: reason|null}.
 * - {type: "bo-clear-prefetch"} (consent withdrawn) empties the cache.
 * - Each hinted URL that passes isHintable() is fetched with
 *   "X-Sec-Purpose: prefetch". "Sec-" names are forbidden request headers in
 *   the Fetch standard: a script's attempt to set Sec-Purpose is silently
 *   dropped, so the POP accepts X-Sec-Purpose as the same signal.
 * - Entries are stored with their hint list's expiry and their size; the cache
 *   holds at most MAX_ENTRIES entries and MAX_TOTAL_BYTES bytes, evicting the
 *   oldest first. Expired entries are never served and are purged on refresh.
 * - No prefetching under Save-Data (navigator.connection.saveData, a page
 *   that says so, or a request that carried "Save-Data: on"; then the worker
 *   stays quiet for SAVE_DATA_QUIET_MS) or on 'slow-2g'/'2g' connections. The
 *   POP also answers /v1/hints with an empty list under "Save-Data: on".
 * - The fetch handler answers same-origin GETs for hintable URLs from the
 *   cache, once: the entry is deleted, the response is marked
 *   "X-Served-From: prefetch", and a background revalidation request (a
 *   normal, non-prefetch GET) lets the POP count the prefetch as used (hint
 *   precision). It never touches non-GET or cross-origin requests.
 */
'use strict';

const CACHE_NAME = 'bo-prefetch-v1';
const CACHE_PREFIX = 'bo-prefetch-';
const HINTS_URL = '/v1/hints';
// Caps: hints are at most 5 per list; 20 entries keeps a few refreshes'
// worth. Item documents are 1-2 KiB, so 2 MiB only binds on unusual
// responses; one response over MAX_ENTRY_BYTES is never stored.
const MAX_ENTRIES = 20;
const MAX_TOTAL_BYTES = 2 * 1024 * 1024;
const MAX_ENTRY_BYTES = 256 * 1024;
// The POP sends at most 5 hints (edge/hints.py MAX_HINTS); never more than that here either.
const MAX_HINTS = 5;
const HINT_REFRESH_INTERVAL_MS = 30 * 1000;
// After a request says Save-Data: on, stay quiet this long.
const SAVE_DATA_QUIET_MS = 10 * 60 * 1000;
const SLOW_CONNECTIONS = new Set(['slow-2g', '2g']);

// Our bookkeeping headers on stored responses; stripped before serving.
const H_EXPIRES = 'X-Bo-Prefetch-Expires';
const H_STORED = 'X-Bo-Prefetch-Stored';
const H_SIZE = 'X-Bo-Prefetch-Size';

// Mirrors edge/hints.py is_hintable_url: same-origin read resources only.
const ID = '[A-Za-z0-9][A-Za-z0-9_~-]{0,127}';
const QUERY = '[A-Za-z0-9_.~-]+=[A-Za-z0-9_.~:-]*(?:&[A-Za-z0-9_.~-]+=[A-Za-z0-9_.~:-]*){0,7}';
const HINTABLE = new RegExp('^/v1/(?:items/' + ID + '|events/' + ID + '|events\\?' + QUERY + ')$');

let lastRefresh = 0;
let refreshing = null;
let saveDataSeenAt = -Infinity;
// Ids of the pages (clients) that said they are not under Save-Data; only
// their requests trigger opportunistic refreshes. Lost when the worker stops,
// until the page posts again.
const clientsAllowingPrefetch = new Set();

function isHintable(path) {
  return typeof path === 'string' && path.length <= 512 && !path.includes('..') && HINTABLE.test(path);
}

// The path and query (no fragment) of a same-origin URL, or null for anything else.
function sameOriginPath(url) {
  let parsed;
  try {
    parsed = new URL(url, self.location.origin);
  } catch (e) {
    return null;
  }
  if (parsed.origin !== self.location.origin) return null;
  return parsed.pathname + parsed.search;
}

function prefetchAllowed() {
  const connection = self.navigator && self.navigator.connection;
  if (connection) {
    if (connection.saveData) return false;
    if (SLOW_CONNECTIONS.has(connection.effectiveType)) return false;
  }
  return Date.now() - saveDataSeenAt > SAVE_DATA_QUIET_MS;
}

self.addEventListener('install', () => {
  self.skipWaiting();
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    const names = await caches.keys();
    await Promise.all(names
      .filter((name) => name.startsWith(CACHE_PREFIX) && name !== CACHE_NAME)
      .map((name) => caches.delete(name)));
    await self.clients.claim();
    // No refresh here: see "Activation alone prefetches nothing" above.
  })());
});

self.addEventListener('message', (event) => {
  const data = event.data || {};
  const source = event.source;
  const clientId = source && source.id;
  if (data.type === 'bo-clear-prefetch') {
    if (clientId) clientsAllowingPrefetch.delete(clientId);
    event.waitUntil(caches.delete(CACHE_NAME).then(() => reply(source, [], 'cleared')));
    return;
  }
  if (data.type !== 'bo-refresh-hints') return;
  if (data.saveData === true) {
    saveDataSeenAt = Date.now();
    if (clientId) clientsAllowingPrefetch.delete(clientId);
    reply(source, [], 'save-data');
    return;
  }
  if (clientId) clientsAllowingPrefetch.add(clientId);
  event.waitUntil(refreshHints(true).then((prefetched) => {
    reply(source, prefetched || [], prefetchAllowed() ? null : 'save-data-or-slow');
  }));
});

function reply(client, prefetched, skipped) {
  if (client && typeof client.postMessage === 'function') {
    client.postMessage({ type: 'bo-hints-refreshed', prefetched, skipped });
  }
}

// One refresh at a time; `force` skips the interval check (a page asked).
// Resolves to the paths prefetched (none when it failed or was skipped).
function refreshHints(force) {
  if (refreshing) return refreshing;
  if (!force && Date.now() - lastRefresh < HINT_REFRESH_INTERVAL_MS) return Promise.resolve([]);
  lastRefresh = Date.now();
  refreshing = doRefresh().catch(() => []).finally(() => { refreshing = null; });
  return refreshing;
}

async function doRefresh() {
  const prefetched = [];
  const cache = await caches.open(CACHE_NAME);
  await purgeExpired(cache);
  if (!prefetchAllowed()) return prefetched;
  const response = await fetch(HINTS_URL, { credentials: 'same-origin', cache: 'no-store' });
  if (!response.ok) return prefetched;
  const list = await response.json();
  const expiresAt = Date.parse(list && list.expires_at);
  if (!Number.isFinite(expiresAt) || expiresAt <= Date.now() || !Array.isArray(list.hints)) return prefetched;
  for (const hint of list.hints.slice(0, MAX_HINTS)) {
    // The hint's own text must pass, before URL parsing could turn backslashes
    // or dot segments into another path; a hintable path is same-origin.
    const path = hint && hint.url;
    if (!isHintable(path) || !prefetchAllowed()) continue;
    if (await cache.match(path)) {
      prefetched.push(path);
      continue;
    }
    try {
      if (await prefetchOne(cache, path, expiresAt)) prefetched.push(path);
    } catch (e) {
      // One bad response (a network error, Vary: * refused by cache.put) does not stop the others.
    }
  }
  return prefetched;
}

async function prefetchOne(cache, path, expiresAt) {
  // GET only, same origin, never following a redirect elsewhere.
  const request = new Request(path, {
    method: 'GET',
    credentials: 'same-origin',
    redirect: 'error',
    headers: { 'X-Sec-Purpose': 'prefetch' },
  });
  const response = await fetch(request);
  if (response.status !== 200 || response.type !== 'basic') return false;
  const cacheControl = (response.headers.get('Cache-Control') || '').toLowerCase();
  if (cacheControl.includes('no-store')) return false;
  const declared = Number(response.headers.get('Content-Length'));
  if (Number.isFinite(declared) && declared > MAX_ENTRY_BYTES) return false;
  const body = await response.arrayBuffer();
  if (body.byteLength > MAX_ENTRY_BYTES) return false;
  const headers = new Headers(response.headers);
  headers.set(H_EXPIRES, String(expiresAt));
  headers.set(H_STORED, String(Date.now()));
  headers.set(H_SIZE, String(body.byteLength));
  await cache.put(path, new Response(body, { status: 200, statusText: response.statusText, headers }));
  await enforceCaps(cache);
  return true;
}

// Evict oldest entries (cache.keys() lists them in insertion order) until
// both caps hold.
async function enforceCaps(cache) {
  const requests = await cache.keys();
  const sizes = [];
  let total = 0;
  for (const request of requests) {
    const stored = await cache.match(request);
    const size = stored ? Number(stored.headers.get(H_SIZE)) || 0 : 0;
    sizes.push(size);
    total += size;
  }
  let count = requests.length;
  for (let i = 0; i < requests.length && (count > MAX_ENTRIES || total > MAX_TOTAL_BYTES); i++) {
    await cache.delete(requests[i]);
    count -= 1;
    total -= sizes[i];
  }
}

async function purgeExpired(cache) {
  const now = Date.now();
  for (const request of await cache.keys()) {
    const stored = await cache.match(request);
    if (!stored || !(Number(stored.headers.get(H_EXPIRES)) > now)) await cache.delete(request);
  }
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const path = sameOriginPath(request.url);
  if (path === null) return;
  // Where the browser exposes Save-Data to the worker; pages also say so in their message.
  const saveData = (request.headers.get('Save-Data') || '').toLowerCase() === 'on';
  if (saveData) saveDataSeenAt = Date.now();
  const fromAllowedPage = clientsAllowingPrefetch.has(event.clientId);
  if (!saveData && fromAllowedPage && path !== HINTS_URL && !path.startsWith(HINTS_URL + '/')) {
    event.waitUntil(refreshHints(false));
  }
  if (!isHintable(path)) return;
  // Both registered now: waitUntil may not be callable later, once the event is done.
  const answer = serveHinted(request, path);
  event.respondWith(answer.then((result) => result.response));
  event.waitUntil(answer.then((result) => result.revalidation));
});

// Resolves to {response, revalidation}: the answer, and the use report to wait for.
async function serveHinted(request, path) {
  let stored;
  try {
    const cache = await caches.open(CACHE_NAME);
    stored = await cache.match(path);
    if (stored) await cache.delete(path); // one use
  } catch (e) {
    stored = undefined;
  }
  if (!stored || !(Number(stored.headers.get(H_EXPIRES)) > Date.now())) {
    return { response: fetch(request), revalidation: null };
  }
  // A normal GET so the POP sees the use; conditional, so usually a 304.
  const etag = stored.headers.get('ETag');
  const revalidation = fetch(path, {
    credentials: 'same-origin',
    cache: 'no-store',
    headers: etag ? { 'If-None-Match': etag } : {},
  }).catch(() => {});
  const headers = new Headers(stored.headers);
  headers.delete(H_EXPIRES);
  headers.delete(H_STORED);
  headers.delete(H_SIZE);
  headers.set('X-Served-From', 'prefetch');
  const response = new Response(await stored.arrayBuffer(), {
    status: stored.status,
    statusText: stored.statusText,
    headers,
  });
  return { response, revalidation };
}
