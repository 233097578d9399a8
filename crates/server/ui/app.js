// The dashboard's shell: sign-in, the key's identity and scopes, hash routing, toasts.
// Routes live in the fragment (#/c/products/p1), so nothing but the path of the app
// itself ever reaches the server's logs, and the key is never in a URL.

import { ApiProblem, get, signIn, signOut, storedKey } from './api.js';
import { field, h, link, put } from './dom.js';
import * as pages from './pages.js';
import * as retention from './retention.js';

/** What the signed-in key is: tenant, id, name, scopes (from /v1/whoami). */
export const session = { who: null, collections: null };

/** Mirrors the server's scope rule: admin holds everything, read_deleted implies read,
 *  `perm:collection` only that collection; without a collection, any grant of perm. */
export function can(permission, collection) {
  const scopes = (session.who && session.who.scopes) || [];
  return scopes.some((s) => {
    const [p, c] = s.split(':');
    const permOk = p === permission || p === 'admin' || (permission === 'read' && p === 'read_deleted');
    if (!permOk) return false;
    if (!c) return true;
    return collection === undefined ? true : c === collection;
  });
}

const routes = [
  [/^\/$/, () => pages.collections],
  [/^\/c\/([^/]+)$/, () => pages.browse],
  [/^\/c\/([^/]+)\/([^/]+)$/, () => pages.record],
  [/^\/trash$/, () => pages.trash],
  [/^\/trash\/([^/]+)$/, () => pages.trash],
  [/^\/deletions\/([^/]+)$/, () => pages.deletion],
  [/^\/retention$/, () => retention.retention],
  [/^\/audit$/, () => retention.audit],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?');
  return { path, query: new URLSearchParams(qs || '') };
}

/** Goes to a route (adds a history entry). */
export function go(route) {
  if (location.hash === '#' + route) render();
  else location.hash = route;
}

function renderNav() {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  if (!session.who) {
    put(nav);
    put(who);
    return;
  }
  put(nav, h('ul', null,
    h('li', null, link('/', 'Collections')),
    can('read_deleted') ? h('li', null, link('/trash', 'Recently deleted')) : null,
    can('purge') || can('admin') || can('hold') || can('erase') ? h('li', null, link('/retention', 'Retention')) : null,
    can('audit') ? h('li', null, link('/audit', 'Audit log')) : null));
  put(who,
    h('span', { class: 'tenant', title: `key ${session.who.key_id}` },
      `${session.who.tenant} · ${session.who.name || session.who.key_id}`),
    h('button', { type: 'button', id: 'sign-out', onclick: () => { signOut(); session.who = null; session.collections = null; go('/'); } },
      'Sign out'));
}

function signInPage(main, message) {
  document.title = 'Sign in · Tombstone';
  const input = h('input', { type: 'password', name: 'key', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('p', { class: 'error', id: 'signin-error', role: 'alert' }, message || '');
  const form = h('form', { class: 'card narrow', id: 'signin', onsubmit: async (e) => {
    e.preventDefault();
    const secret = input.value.trim();
    if (!secret) return;
    signIn(secret);
    try {
      await loadSession();
      input.value = '';
      render();
    } catch (err) {
      signOut();
      session.who = null;
      put(error, err instanceof ApiProblem && err.status === 401
        ? 'That key was not accepted: it is unknown, revoked or mistyped.'
        : `Could not sign in: ${err.message}`);
      input.focus();
    }
  } },
  h('h1', { tabindex: '-1' }, 'Sign in'),
  h('p', null, 'Use an API key. It stays in this browser tab only and is forgotten when you sign out or close the tab.'),
  field('API key', input),
  h('button', { type: 'submit' }, 'Sign in'),
  error);
  put(main, form);
  input.focus();
}

async function loadSession() {
  session.who = await get('/v1/whoami');
  session.collections = null;
}

/** The collections the key may read (cached for the session; counts are refreshed by the
 *  collections page itself). */
export async function collections() {
  if (!session.collections) {
    try {
      session.collections = (await get('/v1/collections')).items;
    } catch (e) {
      if (e instanceof ApiProblem && e.status === 403) session.collections = [];
      else throw e;
    }
  }
  return session.collections;
}

export function collection(name) {
  return (session.collections || []).find((c) => c.name === name);
}

let renderSeq = 0;

export async function render() {
  const main = document.getElementById('main');
  const seq = ++renderSeq;
  if (!storedKey()) {
    session.who = null;
    renderNav();
    signInPage(main);
    return;
  }
  try {
    if (!session.who) await loadSession();
    await collections();
  } catch (e) {
    signOut();
    session.who = null;
    renderNav();
    signInPage(main, e instanceof ApiProblem && e.status === 401
      ? 'Your key is no longer accepted (revoked or unknown). Sign in again.' : `Could not load: ${e.message}`);
    return;
  }
  renderNav();
  const { path, query } = parseHash();
  for (const [re, page] of routes) {
    const m = path.match(re);
    if (!m) continue;
    const args = m.slice(1).map(decodeURIComponent);
    const view = h('div', { class: 'view' });
    try {
      await page()(view, args, query);
    } catch (e) {
      put(view, h('h1', { tabindex: '-1' }, 'Something went wrong'), pages.problem(e));
    }
    if (seq !== renderSeq) return; // a newer navigation won
    put(main, view);
    main.dataset.rendered = String(seq);
    if (performance.getEntriesByName('tombstone:answered').length) {
      void main.offsetHeight; // include layout in the measure
      performance.measure('tombstone:render', 'tombstone:answered');
      performance.clearMarks('tombstone:answered');
    }
    const heading = main.querySelector('h1');
    if (heading) {
      heading.setAttribute('tabindex', '-1');
      document.title = `${heading.textContent} · Tombstone`;
      // Focus follows the page, except when it is on a toast (Undo must stay one key away).
      const inToast = document.getElementById('toasts').contains(document.activeElement);
      if (!inToast && (document.activeElement === document.body || !main.contains(document.activeElement))) heading.focus();
    }
    return;
  }
  put(main, h('h1', { tabindex: '-1' }, 'Not found'), h('p', null, link('/', 'Back to the collections')));
  main.dataset.rendered = String(seq);
}

/** A toast with an optional action (Undo); it stays `ms` milliseconds. */
export function toast(message, action, ms = 10000) {
  const box = document.getElementById('toasts');
  const item = h('div', { class: 'toast' }, h('span', { class: 'toast-text' }, message));
  let timer;
  const close = () => { clearTimeout(timer); item.remove(); };
  let actionButton = null;
  if (action) {
    actionButton = h('button', { type: 'button', class: 'toast-action', onclick: async () => { close(); await action.run(); } },
      action.label);
    item.appendChild(actionButton);
  }
  item.appendChild(h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: close }, '×'));
  box.appendChild(item);
  // An action (Undo) takes the focus: Enter undoes at once, Tab moves on.
  if (actionButton) actionButton.focus();
  timer = setTimeout(close, ms);
  return item;
}

window.addEventListener('hashchange', render);
render();
