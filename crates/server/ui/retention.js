// Retention: legal holds (place, release), GDPR erasure behind a typed confirmation,
// the purge preview with pause/resume, and the audit log with its filters.

import { api, get, recordPath } from './api.js';
import { can, collections as loadCollections, go, render, session, toast } from './app.js';
import { field, h, link, plural, put, recordRoute, show, when } from './dom.js';
import { problem } from './pages.js';

/** The holds of a record, with Release, and a form to place one (scope hold). */
export function holdsPanel(c, r) {
  const box = h('div', { id: 'holds' });
  const holds = r.holds || [];
  const canHold = can('hold', c.name);
  const errors = h('div');
  const list = r.holds === undefined
    ? h('p', null, r.legal_hold ? 'It is under legal hold.' : 'No legal hold.', ' ', h('span', { class: 'muted' }, '(the list of holds needs read_deleted)'))
    : holds.length === 0 ? h('p', null, 'No legal hold.')
      : h('ul', { id: 'hold-list' }, holds.map((hold) => {
        const reason = h('input', { type: 'text', maxlength: 500 });
        return h('li', { dataset: { hold: hold.hold_id } },
          `Case ${show(hold.case)}: ${show(hold.reason)} — placed `, when(hold.at), ` by ${show(hold.actor)}. `,
          canHold ? h('span', { class: 'inline' }, field(`Reason to release ${hold.hold_id}`, reason),
            h('button', { type: 'button', class: 'release', onclick: async () => {
              try {
                await api('POST', recordPath(c.name, r.id, ':release'), { params: { hold_id: hold.hold_id, reason: reason.value } });
                toast('Hold released.', null, 6000);
                session.collections = null;
                render();
              } catch (e) { put(errors, problem(e)); }
            } }, 'Release')) : null);
      }));
  box.appendChild(h('h3', null, 'Legal holds'));
  box.appendChild(list);
  if (canHold) {
    const caseIn = h('input', { type: 'text', name: 'case', maxlength: 500 });
    const reasonIn = h('input', { type: 'text', name: 'hold-reason', maxlength: 500 });
    box.appendChild(h('form', { class: 'filters', id: 'place-hold', onsubmit: async (e) => {
      e.preventDefault();
      try {
        await api('POST', recordPath(c.name, r.id, ':hold'), { body: { case: caseIn.value || null, reason: reasonIn.value || null } });
        toast('Hold placed: it cannot be purged or erased while the hold stands.', null, 6000);
        session.collections = null;
        render();
      } catch (err) { put(errors, problem(err)); }
    } }, field('Case', caseIn), field('Hold reason', reasonIn), h('button', { type: 'submit' }, 'Place hold')));
  } else {
    box.appendChild(h('p', { class: 'muted' }, 'Placing and releasing holds needs the hold scope.'));
  }
  box.appendChild(errors);
  return box;
}

/** Erasure (scope erase): only after typing the record's id; then the receipt. */
export function erasePanel(c, r) {
  const box = h('div', { id: 'erase' }, h('h3', null, 'Erasure (GDPR)'));
  if (!can('erase', c.name)) {
    box.appendChild(h('p', { class: 'muted' }, 'Erasure needs the erase scope.'));
    return box;
  }
  if (r.legal_hold) {
    box.appendChild(h('p', null, 'Not possible while a legal hold stands.'));
    return box;
  }
  const typed = h('input', { type: 'text', name: 'confirm-id', autocomplete: 'off', spellcheck: 'false' });
  const reason = h('input', { type: 'text', name: 'erase-reason', maxlength: 500 });
  const out = h('div');
  const go = h('button', { type: 'button', class: 'danger', id: 'confirm-erase', disabled: true, onclick: async () => {
    go.disabled = true;
    try {
      const receipt = (await api('POST', recordPath(c.name, r.id, ':erase'), { params: { reason: reason.value } })).json;
      session.collections = null;
      put(box, h('h3', null, 'Erasure (GDPR)'), receiptView(receipt));
      box.querySelector('h4').focus();
    } catch (e) {
      put(out, problem(e));
      go.disabled = typed.value !== r.id;
    }
  } }, 'Erase for good');
  typed.addEventListener('input', () => { go.disabled = typed.value !== r.id; });
  box.append(
    h('p', null, 'Erasure removes this record and scrubs its values from every stored version, event and index. It cannot be undone, and no recovery window applies.'),
    field(`Type the record id (${r.id}) to confirm`, typed), field('Erasure reason (optional)', reason), go, out);
  return box;
}

function receiptView(receipt) {
  const scrubbed = receipt.scrubbed || {};
  return h('div', { class: 'card', id: 'erasure-receipt' },
    h('h4', { tabindex: '-1' }, `Erasure receipt: ${receipt.collection} ${receipt.id}`),
    h('dl', { class: 'fields' },
      h('dt', null, 'erased at'), h('dd', null, show(receipt.erased_at)),
      h('dt', null, 'audit entry'), h('dd', null, show(receipt.audit_seq)),
      // Every member the server sends is shown, so a new one (e.g. work still pending)
      // appears without a dashboard change.
      Object.entries(scrubbed).map(([k, v]) => [h('dt', null, k.replace(/_/g, ' ')), h('dd', null, show(v))]),
      Object.entries(receipt).filter(([k]) => !['collection', 'id', 'erased_at', 'audit_seq', 'scrubbed'].includes(k))
        .map(([k, v]) => [h('dt', null, k.replace(/_/g, ' ')), h('dd', null, show(v))])));
}

// ---------------------------------------------------------------------------------------
// The retention page

export async function retention(view) {
  await loadCollections();
  const parts = [h('div', { class: 'page-head' }, h('h1', null, 'Retention'))];
  const panel = h('div', { id: 'panel' });
  parts.push(panel);
  if (can('purge')) {
    try {
      const p = await get('/v1/purge/preview');
      const paused = h('p', { id: 'purge-state', class: p.paused ? 'warn' : 'ok' }, p.paused ? 'Purge is paused: nothing is purged until it is resumed.' : 'Purge is running on its schedule.');
      const toggle = can('admin') ? h('button', { type: 'button', id: 'purge-toggle', onclick: async () => {
        try {
          await api('POST', p.paused ? '/v1/purge:resume' : '/v1/purge:pause');
          render();
        } catch (e) { put(panel, problem(e)); }
      } }, p.paused ? 'Resume purge' : 'Pause purge') : h('p', { class: 'muted' }, 'Pausing purge needs the admin scope.');
      parts.push(h('section', { 'aria-labelledby': 'h-preview' }, h('h2', { id: 'h-preview' }, 'Purge preview'), paused, toggle,
        h('p', null, `${plural(p.total, 'record')} due now.`),
        h('div', { class: 'scroll' }, h('table', { id: 'preview' }, h('caption', { class: 'sr-only' }, 'Purge preview per collection'),
          h('thead', null, h('tr', null, ['collection', 'due now', 'due within 7 days', 'held', 'sample'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', null, Object.entries(p.collections).map(([name, c]) => h('tr', null, h('th', { scope: 'row' }, name),
            h('td', { class: 'num' }, String(c.count)), h('td', { class: 'num' }, String(c.due_next_7_days)), h('td', { class: 'num' }, String(c.held)),
            h('td', null, c.sample.slice(0, 5).map((id, i) => [i ? ', ' : '', link(recordRoute(name, id, true), id)]), c.sample.length > 5 ? ' …' : ''))))))));
    } catch (e) {
      parts.push(problem(e));
    }
  } else {
    parts.push(h('p', { class: 'muted' }, 'The purge preview needs the purge scope.'));
  }
  // Holds and erasure act on one record: find it, then use its page's retention section.
  const coll = h('select', { name: 'collection' }, (session.collections || []).map((c) => h('option', { value: c.name }, c.name)));
  const id = h('input', { type: 'text', name: 'id', required: true });
  parts.push(h('section', { 'aria-labelledby': 'h-find' }, h('h2', { id: 'h-find' }, 'Holds and erasure'),
    h('p', null, 'Legal holds are placed and released, and records erased, on the record’s page. Open a record by its id:'),
    h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); if (id.value) go(recordRoute(coll.value, id.value.trim())); } },
      field('Collection', coll), field('Record id', id), h('button', { type: 'submit' }, 'Open'))));
  if (can('audit')) parts.push(h('p', null, link('/audit', 'The audit log')));
  put(view, ...parts);
}

// ---------------------------------------------------------------------------------------
// The audit log

const ACTIONS = ['create', 'update', 'delete', 'cascade_delete', 'restore', 'purge', 'erase', 'hold', 'release', 'key_create', 'key_revoke'];

/** The chain's verify status (GET /v1/audit/verify, admin) and Check now. */
async function verifyPanel() {
  const box = h('section', { id: 'verify', 'aria-labelledby': 'h-verify' }, h('h2', { id: 'h-verify' }, 'Chain verification'));
  if (!can('admin')) {
    box.appendChild(h('p', { class: 'muted', id: 'verify-status' }, 'The chain’s verify status needs the admin scope.'));
    return box;
  }
  let v;
  try {
    v = await get('/v1/audit/verify');
  } catch (e) {
    box.appendChild(problem(e));
    return box;
  }
  box.appendChild(verifyStatus(v));
  const out = h('div', { id: 'verify-out' });
  const now = h('button', { type: 'button', id: 'verify-now', onclick: async () => {
    now.disabled = true;
    put(out, h('p', { role: 'status' }, 'Checking the whole chain…'));
    try {
      const res = await api('POST', '/v1/audit/verify');
      if (res.status === 202) {
        put(out, h('p', { role: 'status' }, 'Another server is checking the chain right now; its result will show here when you reload.'));
        now.disabled = false;
        return;
      }
      toast(res.json.reused ? 'The chain was checked seconds ago: that result stands.' : `Checked: the chain is ${res.json.status}.`, null, 6000);
      render();
    } catch (e) {
      put(out, problem(e));
      now.disabled = false;
    }
  } }, 'Check now');
  box.append(h('div', { class: 'actions' }, now), out);
  return box;
}

function verifyStatus(v) {
  const checked = v.checked_at ? [' Checked ', when(v.checked_at), '.'] : null;
  if (v.status === 'pending') {
    return h('p', { id: 'verify-status', class: 'warn', dataset: { status: v.status } }, 'Not checked yet: the server checks the chain at start and every hour.');
  }
  if (v.status === 'intact') {
    return h('p', { id: 'verify-status', class: 'ok', dataset: { status: v.status } }, h('strong', null, 'Intact:'),
      ' every entry matches its hash and follows the one before it.', checked);
  }
  const where = v.broken_entry
    ? [' The first broken entry is ', h('strong', null, `#${v.broken_entry.seq}`), ` of this tenant: ${v.broken_entry.problem}.`]
    : [' The first broken entry is not this tenant’s; the operator can see it with “tombstone audit verify”.'];
  return h('p', { id: 'verify-status', class: 'error', role: 'alert', dataset: { status: v.status } }, h('strong', null, 'Broken:'),
    ' an entry was edited, removed or reordered outside Tombstone.', where, checked);
}

export async function audit(view, _args, query) {
  const filters = ['collection', 'record_id', 'action', 'actor', 'since'];
  const params = { limit: 100, cursor: query.get('cursor') };
  for (const f of filters) params[f] = query.get(f);
  let page = null;
  let error = null;
  try { page = await get('/v1/audit', params); } catch (e) { error = e; }
  const inputs = {
    collection: h('input', { type: 'text', name: 'collection', value: query.get('collection') || '' }),
    record_id: h('input', { type: 'text', name: 'record_id', value: query.get('record_id') || '' }),
    action: h('select', { name: 'action' }, h('option', { value: '' }, 'any'), ACTIONS.map((a) => h('option', { value: a, selected: query.get('action') === a }, a))),
    actor: h('input', { type: 'text', name: 'actor', value: query.get('actor') || '' }),
    since: h('input', { type: 'text', name: 'since', value: query.get('since') || '', placeholder: '2026-01-01T00:00:00Z' }),
  };
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log', onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, el] of Object.entries(inputs)) if (el.value) p.set(k, el.value);
    go(`/audit${p.toString() ? '?' + p : ''}`);
  } }, field('Collection', inputs.collection), field('Record id', inputs.record_id), field('Action', inputs.action),
  field('Actor (key id)', inputs.actor), field('Since (RFC 3339)', inputs.since), h('button', { type: 'submit' }, 'Filter'));
  const next = new URLSearchParams(query);
  if (page && page.next_cursor) next.set('cursor', page.next_cursor);
  put(view,
    h('div', { class: 'page-head' }, h('h1', null, 'Audit log')),
    await verifyPanel(),
    form,
    error ? problem(error) : h('div', { class: 'scroll' }, h('table', { id: 'audit' }, h('caption', { class: 'sr-only' }, 'Audit entries, oldest first'),
      h('thead', null, h('tr', null, ['seq', 'when', 'action', 'record', 'by', 'reason', 'operation'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, page.items.map((a) => h('tr', null, h('td', { class: 'num' }, String(a.seq)), h('td', null, when(a.at)), h('td', null, a.action),
        h('td', null, a.collection && a.record_id ? link(recordRoute(a.collection, a.record_id), `${a.collection} ${a.record_id}`) : show(a.collection)),
        h('td', null, show(a.actor)), h('td', null, show(a.reason)),
        h('td', null, a.deletion_id ? link(`/deletions/${a.deletion_id}`, 'operation') : '—')))))),
    page && page.next_cursor ? h('nav', { class: 'pager', 'aria-label': 'Pages' }, link(`/audit?${next}`, 'Next page')) : null);
}
