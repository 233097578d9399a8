// The pages of the dashboard: collections, browsing (and its Archived view), a record (with its versions),
// the trash ("Recently deleted") and a deletion operation. Each page is `async (view, args, query)`: it reads
// the API, then builds its DOM once (a page of 50 records is one DocumentFragment).

import { api, ApiProblem, get, recordPath } from './api.js';
import { can, collection, collections as loadCollections, go, render, session, toast } from './app.js';
import { field, h, link, plural, put, recordRoute, show, timeLeft, when } from './dom.js';
import { erasePanel, holdsPanel } from './retention.js';

const SYSTEM = new Set(['id', 'collection', 'version', 'created_at', 'updated_at', 'deleted', 'deleted_at',
  'deleted_by', 'delete_reason', 'deletion_id', 'purge_at', 'archived', 'archived_at', 'archived_by', 'archive_reason',
  'legal_hold', 'holds']);

/** A readable name for a record: its `name`/`title`/`sku`/`email`, else its id. */
export function label(record) {
  for (const k of ['name', 'title', 'sku', 'email']) {
    if (record && typeof record[k] === 'string' && record[k]) return record[k];
  }
  return record ? record.id : '';
}

/** Who did it: "you" for the signed-in key, else the key id. */
export function actor(keyId) {
  if (!keyId) return '—';
  return session.who && keyId === session.who.key_id ? h('span', { title: keyId }, 'you') : keyId;
}

/** A problem as a sentence, with its request id for the operator. */
export function problem(e) {
  if (!(e instanceof ApiProblem)) return h('p', { class: 'error', role: 'alert' }, String(e.message || e));
  const b = e.body;
  let text = b.detail || b.title || e.message;
  if (e.type === 'forbidden') text = `This key lacks the ${b.missing_scope} scope for that.`;
  if (e.type === 'legal-hold') text = 'Refused: the record is under a legal hold. Release the hold first.';
  if (e.type === 'archived') text = 'Refused: the record is archived (read-only). Unarchive it first.';
  return h('p', { class: 'error', role: 'alert' }, text,
    b.request_id ? h('span', { class: 'muted' }, ` (request ${b.request_id})`) : null);
}

function pageHeader(title, ...extra) {
  return h('div', { class: 'page-head' }, h('h1', null, title), ...extra);
}

// ---------------------------------------------------------------------------------------
// Collections

export async function collections(view) {
  const items = (await get('/v1/collections')).items;
  session.collections = items;
  const rows = items.map((c) => {
    const n = c.counts;
    const cell = (v, cls) => h('td', { class: 'num' + (cls && v ? ' ' + cls : '') }, v === null ? h('span', { class: 'muted', title: 'needs read_deleted' }, '—') : String(v));
    return h('tr', { dataset: { collection: c.name } },
      h('th', { scope: 'row' }, n.active === null ? c.name : link(`/c/${c.name}`, c.name)),
      cell(n.active), cell(n.archived), cell(n.deleted), cell(n.expiring_7d, 'soon'), cell(n.held),
      h('td', null, n.deleted === null ? '' : link(`/trash/${c.name}`, 'Recently deleted', { 'aria-label': `Recently deleted in ${c.name}` })));
  });
  put(view,
    pageHeader('Collections'),
    items.length === 0 ? h('p', null, 'This key cannot read any collection.') : h('div', { class: 'scroll' },
      h('table', { id: 'collections' },
        h('caption', { class: 'sr-only' }, 'Collections with their counts'),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Collection'), h('th', { scope: 'col' }, 'Active'),
          h('th', { scope: 'col' }, 'Archived'), h('th', { scope: 'col' }, 'In the trash'), h('th', { scope: 'col' }, 'Expiring within 7 days'),
          h('th', { scope: 'col' }, 'Held'), h('th', { scope: 'col' }, 'Trash'))),
        h('tbody', null, rows))));
}

// ---------------------------------------------------------------------------------------
// Browse

function scalarFields(c) {
  return c.fields.filter((f) => f.type !== 'json');
}

/** The rows of a record table, built in one fragment. */
export function recordRows(c, items, columns) {
  const frag = document.createDocumentFragment();
  for (const r of items) {
    const tr = document.createElement('tr');
    tr.dataset.id = r.id;
    const th = document.createElement('th');
    th.scope = 'row';
    const a = document.createElement('a');
    a.href = '#' + recordRoute(c.name, r.id, r.deleted);
    a.textContent = r.id;
    th.appendChild(a);
    tr.appendChild(th);
    for (const f of columns) {
      const td = document.createElement('td');
      td.textContent = show(r[f]);
      tr.appendChild(td);
    }
    const status = document.createElement('td');
    status.textContent = r.deleted ? 'deleted' : r.archived ? 'archived' : r.legal_hold ? 'held' : 'active';
    status.className = r.deleted ? 'state badge-deleted' : 'state';
    tr.appendChild(status);
    frag.appendChild(tr);
  }
  return frag;
}

export async function browse(view, [name], query) {
  await loadCollections();
  const c = collection(name);
  if (!c) {
    put(view, pageHeader('Not found'), h('p', null, `No collection ${name} for this key.`));
    return;
  }
  const params = { limit: 50, count: 'true', q: query.get('q'), sort: query.get('sort'), cursor: query.get('cursor') };
  const ff = query.get('ff');
  const fv = query.get('fv');
  if (ff && fv) params[`filter[${ff}]`] = fv;
  const deletedToo = query.get('deleted') === '1' && can('read_deleted', name);
  if (deletedToo) params.include = 'deleted';
  // The Archived view: archived records only, each with Unarchive.
  const archivedOnly = query.get('archived') === '1';
  if (archivedOnly) params['filter[archived]'] = 'true';
  const searchable = c.fields.some((f) => f.search);

  const panel = h('div', { id: 'panel' });
  let page = null;
  let error = null;
  try {
    page = await get(`/v1/${encodeURIComponent(name)}`, params);
  } catch (e) {
    error = e;
  }
  // From here (the API has answered) to the page laid out: app.js measures it as
  // 'tombstone:render' (see docs/PERFORMANCE.md).
  performance.mark('tombstone:answered');

  const q = h('input', { type: 'search', name: 'q', value: query.get('q') || '', disabled: !searchable });
  const sortOptions = [['', 'id (creation order)'], ['-created_at', 'newest first'], ['-updated_at', 'recently updated']];
  for (const f of scalarFields(c)) sortOptions.push([f.name, `${f.name} ↑`], [`-${f.name}`, `${f.name} ↓`]);
  const sort = h('select', { name: 'sort' }, sortOptions.map(([v, t]) => h('option', { value: v, selected: (query.get('sort') || '') === v }, t)));
  const ffSel = h('select', { name: 'ff' }, h('option', { value: '' }, '(no filter)'),
    scalarFields(c).map((f) => h('option', { value: f.name, selected: ff === f.name }, f.name)));
  const fvIn = h('input', { type: 'text', name: 'fv', value: fv || '' });
  const del = can('read_deleted', name) ? h('input', { type: 'checkbox', name: 'deleted', checked: deletedToo }) : null;
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': `Search ${name}`, onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (q.value) p.set('q', q.value);
    if (sort.value) p.set('sort', sort.value);
    if (ffSel.value && fvIn.value) { p.set('ff', ffSel.value); p.set('fv', fvIn.value); }
    if (del && del.checked) p.set('deleted', '1');
    if (archivedOnly) p.set('archived', '1');
    go(`/c/${name}${p.toString() ? '?' + p : ''}`);
  } },
  field('Search', q, searchable ? null : 'no searchable field'),
  field('Sort', sort),
  field('Filter field', ffSel),
  field('equals', fvIn),
  del ? h('div', { class: 'field check' }, del, h('label', { for: del.id || (del.id = 'inc-deleted') }, 'Include deleted')) : null,
  h('button', { type: 'submit' }, 'Apply'));

  const columns = c.fields.filter((f) => f.type !== 'json').slice(0, 4).map((f) => f.name);
  let body;
  if (error) {
    body = problem(error);
  } else {
    const tbody = h('tbody');
    tbody.appendChild(recordRows(c, page.items, columns));
    // Delete per row (scope delete): the same dialog as the record page, above the table.
    const deletable = !archivedOnly && can('delete', name);
    if (deletable) {
      for (const tr of tbody.querySelectorAll('tr')) {
        const r = page.items.find((x) => x.id === tr.dataset.id);
        tr.appendChild(h('td', null, r && !r.deleted ? h('button', {
          type: 'button', class: 'danger delete-row', 'aria-label': `Delete ${name} “${label(r)}”…`,
          onclick: () => deletePanel(panel, c, r, () => render()),
        }, 'Delete…') : ''));
      }
    }
    if (archivedOnly) {
      const writable = can('write', name);
      for (const tr of tbody.querySelectorAll('tr')) {
        const r = page.items.find((x) => x.id === tr.dataset.id);
        tr.appendChild(h('td', null, writable && r && !r.deleted ? h('button', {
          type: 'button', class: 'unarchive', 'aria-label': `Unarchive ${label(r)}`,
          onclick: async (e) => {
            e.target.disabled = true;
            try {
              await api('POST', recordPath(name, r.id, ':unarchive'), { headers: { 'If-Match': `"v${r.version}"` } });
              toast(`Unarchived ${name} “${label(r)}”.`, null, 6000);
              session.collections = null;
              render();
            } catch (err) {
              e.target.disabled = false;
              toast(problem(err).textContent);
            }
          } }, 'Unarchive') : ''));
      }
    }
    const next = new URLSearchParams(query);
    next.set('cursor', page.next_cursor || '');
    const first = new URLSearchParams(query);
    first.delete('cursor');
    body = [
      panel,
      h('p', { class: 'muted', id: 'total' }, page.total !== undefined ? `${plural(page.total, 'record')}` : ''),
      h('div', { class: 'scroll' }, h('table', { id: 'records' },
        h('caption', { class: 'sr-only' }, `Records of ${name}`),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'id'), columns.map((f) => h('th', { scope: 'col' }, f)),
          h('th', { scope: 'col' }, 'state'), archivedOnly || deletable ? h('th', { scope: 'col' }, 'action') : null)),
        tbody)),
      h('nav', { class: 'pager', 'aria-label': 'Pages' },
        query.get('cursor') ? link(`/c/${name}?${first}`, 'First page') : null,
        page.next_cursor ? link(`/c/${name}?${next}`, 'Next page', { id: 'next-page' }) : null),
    ];
  }
  put(view,
    pageHeader(archivedOnly ? `${name}: archived` : name,
      archivedOnly ? link(`/c/${name}`, `Back to ${name}`, { id: 'not-archived-link' }) : link(`/c/${name}?archived=1`, 'Archived', { id: 'archived-link' }),
      can('read_deleted', name) ? link(`/trash/${name}`, 'Recently deleted') : null),
    form, body);
}

// ---------------------------------------------------------------------------------------
// Record

async function fetchRecord(name, id) {
  try {
    return await get(recordPath(name, id));
  } catch (e) {
    if (e instanceof ApiProblem && e.status === 404 && can('read_deleted', name)) {
      return get(recordPath(name, id), { include: 'deleted' });
    }
    throw e;
  }
}

function fieldsList(c, record) {
  return h('dl', { class: 'fields', id: 'fields' }, c.fields.map((f) => {
    const v = record[f.name];
    let dd = show(v);
    if (f.ref && v) dd = link(recordRoute(f.ref.collection, v), v);
    return [h('dt', null, f.name, f.pii ? h('span', { class: 'tag' }, 'pii') : null), h('dd', null, dd)];
  }),
  h('dt', null, 'version'), h('dd', null, String(record.version)),
  h('dt', null, 'created'), h('dd', null, when(record.created_at)),
  h('dt', null, 'updated'), h('dd', null, when(record.updated_at)));
}

/** The records this one's ref fields point at. */
function referencesOut(c, r) {
  const refs = c.fields.filter((f) => f.ref && r[f.name]);
  if (!refs.length) return h('p', { class: 'muted' }, 'It refers to nothing.');
  return h('ul', { id: 'refs-out' }, refs.map((f) => h('li', null, `${f.name}: `,
    link(recordRoute(f.ref.collection, r[f.name]), `${f.ref.collection} ${r[f.name]}`),
    ` (if that is deleted: ${f.ref.on_delete})`)));
}

/** Records of other collections whose ref fields point at this one. */
async function referencesIn(name, id) {
  const rows = [];
  for (const other of session.collections || []) {
    for (const f of other.fields) {
      if (!f.ref || f.ref.collection !== name || !can('read', other.name)) continue;
      try {
        const page = await get(`/v1/${encodeURIComponent(other.name)}`, { [`filter[${f.name}]`]: id, limit: 20, count: 'true' });
        if (page.total) rows.push({ other, f, page });
      } catch { /* a collection this key cannot list is simply not shown */ }
    }
  }
  if (!rows.length) return h('p', { class: 'muted' }, 'Nothing refers to it.');
  return h('ul', { id: 'refs-in' }, rows.map(({ other, f, page }) => h('li', null,
    `${plural(page.total, other.name + ' record')} via ${f.name} (on delete: ${f.ref.on_delete}): `,
    page.items.map((r, i) => [i ? ', ' : '', link(recordRoute(other.name, r.id), label(r))]),
    page.total > page.items.length ? ' …' : '')));
}

async function auditTrail(name, id) {
  if (!can('audit')) return h('p', { class: 'muted' }, 'The audit trail needs the audit scope.');
  try {
    const page = await get('/v1/audit', { collection: name, record_id: id, limit: 100 });
    return h('div', { class: 'scroll' }, h('table', { id: 'history' },
      h('caption', { class: 'sr-only' }, 'Audit trail'),
      h('thead', null, h('tr', null, ['when', 'action', 'version', 'by', 'reason', 'operation'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, page.items.map((a) => h('tr', null,
        h('td', null, when(a.at)), h('td', null, a.action), h('td', null, show(a.version)), h('td', null, actor(a.actor)),
        h('td', null, show(a.reason)), h('td', null, a.deletion_id ? link(`/deletions/${a.deletion_id}`, 'operation') : '—'))))));
  } catch (e) {
    return problem(e);
  }
}

export async function record(view, [name, id]) {
  await loadCollections();
  const c = collection(name);
  if (!c) {
    put(view, pageHeader('Not found'), h('p', null, `No collection ${name} for this key.`));
    return;
  }
  let r;
  try {
    r = await fetchRecord(name, id);
  } catch (e) {
    put(view, pageHeader(`${name} ${id}`), problem(e), h('p', null, link(`/c/${name}`, `Back to ${name}`)));
    return;
  }
  const actions = h('div', { class: 'actions', id: 'actions' });
  const panel = h('div', { id: 'panel' });
  const missing = [];
  if (!r.deleted && can('write', name)) {
    actions.appendChild(r.archived
      ? h('button', { type: 'button', id: 'unarchive', onclick: () => archiveRecord(panel, c, r, false) }, 'Unarchive')
      : h('button', { type: 'button', id: 'archive', onclick: () => archivePanel(panel, c, r) }, 'Archive…'));
  }
  if (!r.deleted) {
    if (can('delete', name)) actions.appendChild(h('button', { type: 'button', id: 'delete', class: 'danger', onclick: () => deletePanel(panel, c, r) }, 'Delete…'));
    else missing.push('delete');
  } else {
    if (can('restore', name)) {
      actions.appendChild(h('button', { type: 'button', id: 'restore', onclick: () => restoreRecord(panel, c, r) }, 'Restore'));
      if (r.deletion_id) actions.appendChild(h('button', { type: 'button', id: 'restore-op', onclick: () => restoreOperation(panel, r.deletion_id) }, 'Restore the whole operation'));
    } else missing.push('restore');
    if (can('purge', name)) actions.appendChild(purgeButton(panel, c, r));
    else missing.push('purge');
  }
  const [refsIn, trail, versions] = await Promise.all([referencesIn(name, id), auditTrail(name, id), versionsPanel(c, r)]);
  const t = r.deleted ? timeLeft(r.purge_at) : null;
  put(view,
    pageHeader(`${name}: ${label(r)}`),
    r.deleted ? h('div', { class: 'banner deleted', id: 'deleted-banner' },
      h('strong', null, 'In the trash (read-only). '),
      'Deleted ', when(r.deleted_at), ' by ', actor(r.deleted_by),
      r.delete_reason ? [': “', r.delete_reason, '”'] : null, '. ',
      h('span', { class: t.soon ? 'soon' : '' }, `Purge: ${t.text}.`), ' ',
      r.deletion_id && can('read_deleted') ? link(`/deletions/${r.deletion_id}`, 'Deleted together') : null) : null,
    r.archived ? h('p', { class: 'banner archived', id: 'archived-banner' },
      h('strong', null, 'Archived (read-only). '), 'Archived ', when(r.archived_at), ' by ', actor(r.archived_by),
      r.archive_reason ? [': “', r.archive_reason, '”'] : null, '. It is out of lists and search until unarchived.') : null,
    r.legal_hold ? h('p', { class: 'banner held', id: 'held-banner' }, 'Under legal hold: it cannot be purged or erased until every hold is released.') : null,
    actions,
    missing.length ? h('p', { class: 'muted', id: 'not-offered' }, `Not offered with this key: ${missing.map((s) => `${s} (needs the ${s} scope)`).join(', ')}.`) : null,
    panel,
    h('section', { 'aria-labelledby': 'h-fields' }, h('h2', { id: 'h-fields' }, 'Fields'), fieldsList(c, r)),
    h('section', { 'aria-labelledby': 'h-refs-out' }, h('h2', { id: 'h-refs-out' }, 'It refers to'), referencesOut(c, r)),
    h('section', { 'aria-labelledby': 'h-refs' }, h('h2', { id: 'h-refs' }, 'Refers to it'), refsIn),
    h('section', { 'aria-labelledby': 'h-versions' }, h('h2', { id: 'h-versions' }, 'Versions'), versions),
    h('section', { 'aria-labelledby': 'h-history' }, h('h2', { id: 'h-history' }, 'History (audit trail)'), trail),
    h('section', { 'aria-labelledby': 'h-retention', id: 'retention' }, h('h2', { id: 'h-retention' }, 'Legal holds and erasure'),
      holdsPanel(c, r), erasePanel(c, r)));
}

// ---------------------------------------------------------------------------------------
// Versions (§14): every change keeps one; two can be compared, and an active record can be
// reverted to an earlier one's fields (a new version).

/** What a version shows beside its declared fields, in the diff. */
const DIFFED_SYSTEM = ['deleted', 'archived', 'legal_hold'];

function diffTable(c, a, b) {
  const names = [...c.fields.map((f) => f.name), ...DIFFED_SYSTEM];
  const changed = names.filter((n) => JSON.stringify(a.record[n]) !== JSON.stringify(b.record[n]));
  if (!changed.length) return h('p', { id: 'diff', class: 'muted' }, `Versions ${a.version} and ${b.version} hold the same values.`);
  return h('div', { class: 'scroll' }, h('table', { id: 'diff' },
    h('caption', null, `What changed from version ${a.version} to version ${b.version}`),
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'field'),
      h('th', { scope: 'col' }, `version ${a.version}`), h('th', { scope: 'col' }, `version ${b.version}`))),
    h('tbody', null, changed.map((n) => h('tr', { dataset: { field: n } },
      h('th', { scope: 'row' }, n), h('td', { class: 'old' }, show(a.record[n])), h('td', { class: 'new' }, show(b.record[n])))))));
}

async function versionsPanel(c, r) {
  let items;
  try {
    items = (await get(recordPath(c.name, r.id, '/versions'), { limit: 100 })).items;
  } catch (e) {
    return problem(e);
  }
  if (!items.length) return h('p', { class: 'muted', id: 'versions' }, 'No versions are kept for this record.');
  const revertable = !r.deleted && !r.archived && can('write', c.name);
  const out = h('div', { id: 'diff-out', 'aria-live': 'polite' });
  const pick = (name, initial) => h('select', { name }, items.map((v) =>
    h('option', { value: String(v.version), selected: v.version === initial ? true : undefined }, `version ${v.version} (${v.action})`)));
  const from = pick('diff-from', items.length > 1 ? items[1].version : items[0].version);
  const to = pick('diff-to', items[0].version);
  const compare = () => {
    const a = items.find((v) => String(v.version) === from.value);
    const b = items.find((v) => String(v.version) === to.value);
    put(out, diffTable(c, a, b));
  };
  const revert = async (v) => {
    try {
      await api('POST', recordPath(c.name, r.id, ':revert'), {
        params: { version: String(v.version) }, headers: { 'If-Match': `"v${r.version}"` },
      });
      toast(`Reverted ${c.name} “${label(r)}” to the fields of version ${v.version}.`, null, 6000);
      render();
    } catch (e) {
      put(out, problem(e));
    }
  };
  return h('div', null,
    h('div', { class: 'scroll' }, h('table', { id: 'versions' },
      h('caption', { class: 'sr-only' }, 'Versions, newest first'),
      h('thead', null, h('tr', null, ['version', 'from', 'action', 'by', 'operation', revertable ? 'revert' : null]
        .filter((t) => t !== null).map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, items.map((v) => h('tr', { dataset: { version: String(v.version) } },
        h('td', null, String(v.version)), h('td', null, when(v.valid_from)), h('td', null, v.action),
        h('td', null, actor(v.actor)),
        h('td', null, v.deletion_id ? link(`/deletions/${v.deletion_id}`, 'operation') : '—'),
        revertable ? h('td', null, v.version === r.version ? 'current'
          : h('button', { type: 'button', id: `revert-${v.version}`, onclick: () => revert(v) }, `Revert to ${v.version}`)) : null))))),
    revertable ? null : h('p', { class: 'muted', id: 'revert-not-offered' },
      r.deleted || r.archived ? 'Revert is offered for active records that are not archived.' : 'Revert needs the write scope.'),
    h('div', { class: 'actions', id: 'diff-form' },
      field('Compare version', from), field('with version', to),
      h('button', { type: 'button', id: 'compare', onclick: compare }, 'Show differences')),
    out);
}

// ---------------------------------------------------------------------------------------
// Archive: out of the way, kept, read-only (§17).

function archivePanel(panel, c, r) {
  const reason = h('input', { type: 'text', name: 'archive-reason', maxlength: 500 });
  const errors = h('div');
  put(panel, h('section', { class: 'card', id: 'archive-confirm', 'aria-labelledby': 'h-archive' },
    h('h2', { id: 'h-archive' }, 'Archive this record'),
    h('p', null, 'It leaves lists, counts and search, stays readable here, becomes read-only, and is never purged for it. Unarchive brings it back.'),
    field('Reason (optional)', reason),
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'confirm-archive', onclick: () => archiveRecord(errors, c, r, true, reason.value) }, 'Archive'),
      h('button', { type: 'button', onclick: () => put(panel) }, 'Cancel')),
    errors));
  reason.focus();
}

async function archiveRecord(panel, c, r, archive, reason) {
  try {
    await api('POST', recordPath(c.name, r.id, archive ? ':archive' : ':unarchive'), {
      body: archive ? { reason: reason || null } : undefined,
      headers: { 'If-Match': `"v${r.version}"` },
    });
    toast(`${archive ? 'Archived' : 'Unarchived'} ${c.name} “${label(r)}”.`, null, 6000);
    session.collections = null;
    render();
  } catch (e) {
    put(panel, problem(e));
  }
}

// ---------------------------------------------------------------------------------------
// Delete: the blast radius first, then the delete, then Undo.

function countList(counts, skip) {
  return Object.entries(counts || {}).filter(([, n]) => n > 0).map(([coll, n]) =>
    h('li', { dataset: { collection: coll, count: String(n - (skip && skip.collection === coll ? 1 : 0)) } },
      `${coll}: ${n - (skip && skip.collection === coll ? 1 : 0)}`)).filter((li) => li.dataset.count !== '0');
}

/** The delete dialog: the dry run's blast radius first, an optional reason, then the delete
 *  and a toast with Undo. `after` (the browse table) replaces going to the deleted record. */
async function deletePanel(panel, c, r, after) {
  put(panel, h('p', null, 'Working out what would go with it…'));
  let plan;
  try {
    plan = (await api('DELETE', recordPath(c.name, r.id), { params: { dry_run: 'true' } })).json;
  } catch (e) {
    put(panel, problem(e));
    return;
  }
  const others = plan.would_delete.length - 1;
  const blocked = plan.blockers_total > 0;
  const reason = h('input', { type: 'text', name: 'reason', maxlength: 500 });
  const confirm = h('button', { type: 'button', id: 'confirm-delete', class: 'danger', disabled: blocked, onclick: async () => {
    confirm.disabled = true;
    try {
      const res = await api('DELETE', recordPath(c.name, r.id), { params: { reason: reason.value }, headers: { 'If-Match': `"v${r.version}"` } });
      const deletionId = res.headers.get('Deletion-Id');
      const total = plan.would_delete.length;
      toast(`Deleted ${c.name} “${label(r)}”${total > 1 ? ` and ${plural(total - 1, 'related record')}` : ''}.`,
        can('restore', c.name) && deletionId ? { label: 'Undo', run: () => undo(deletionId) } : null);
      session.collections = null;
      if (after) after();
      else go(can('read_deleted', c.name) ? recordRoute(c.name, r.id, true) : `/c/${c.name}`);
    } catch (e) {
      confirm.disabled = blocked;
      put(errors, problem(e));
    }
  } }, blocked ? 'Cannot delete' : `Delete ${plural(plan.would_delete.length, 'record')}`);
  const errors = h('div');
  put(panel, h('section', { class: 'card', id: 'blast', 'aria-labelledby': 'h-blast', dataset: { total: String(plan.would_delete.length), blockers: String(plan.blockers_total), orphaned: String(plan.orphaned.length) } },
    h('h2', { id: 'h-blast' }, after ? `What deleting ${c.name} “${label(r)}” does` : 'What this delete does'),
    h('p', { id: 'blast-words' }, blocked
      ? `It cannot be deleted: ${plural(plan.blockers_total, 'record')} still refer to it and forbid it (restrict).`
      : others > 0
        ? `Deleting it also deletes ${plural(others, 'other record')} (cascade):`
        : 'Only this record is deleted; nothing else goes with it.'),
    others > 0 ? h('ul', { id: 'blast-counts' }, countList(plan.counts, plan.root)) : null,
    plan.orphaned.length ? h('p', { id: 'blast-orphaned' }, `${plural(plan.orphaned.length, 'record')} will keep existing with the reference cleared (orphaned): `,
      plan.orphaned.slice(0, 10).map((o, i) => [i ? ', ' : '', link(recordRoute(o.collection, o.id), `${o.collection} ${o.id}`)])) : null,
    plan.eventual.length ? h('p', null, `${plural(plan.eventual.length, 'more record')} will be deleted in the background (eventual cascade).`) : null,
    blocked ? h('ul', { id: 'blast-blockers' }, plan.blockers.map((b) => h('li', null, link(recordRoute(b.collection, b.id), `${b.collection} ${b.id}`)))) : null,
    !blocked ? h('p', null, `Everything is recoverable for ${Math.round(c.retention_seconds / 86400)} days; Undo is offered right after.`) : null,
    !blocked ? field('Reason (optional)', reason) : null,
    h('div', { class: 'actions' }, confirm, h('button', { type: 'button', onclick: () => put(panel) }, 'Cancel')),
    errors));
  (blocked ? panel.querySelector('button:not([disabled])') : reason).focus();
}

async function undo(deletionId) {
  try {
    const res = (await api('POST', `/v1/deletions/${encodeURIComponent(deletionId)}:restore`)).json;
    toast(`Undone: ${plural(res.restored, 'record')} restored.`, null, 6000);
  } catch (e) {
    toast(`Undo failed: ${problem(e).textContent}`, { label: 'Open the operation', run: () => go(`/deletions/${deletionId}`) });
  }
  session.collections = null;
  render();
}

// ---------------------------------------------------------------------------------------
// Restore and purge, with conflicts explained.

/** Explains one conflict: which record is in the way (with a link), or which parent is
 *  still deleted. */
async function explainConflict(kind, collName, id, { conflicting_id: conflictingId, fields, parent, blockers }) {
  if (kind === 'unique-conflict' && conflictingId) {
    let other = null;
    try { other = await get(recordPath(collName, conflictingId)); } catch { other = null; }
    let mine = null;
    try { mine = await get(recordPath(collName, id), { include: 'deleted' }); } catch { mine = null; }
    const fs = fields && fields.length ? fields : (collection(collName) ? collection(collName).unique.find(() => true) || [] : []);
    const values = fs.map((f) => (mine && mine[f] !== undefined ? `${f} ${show(mine[f])}` : f)).join(', ');
    return h('li', { class: 'conflict' }, `${collName} ${mine ? `“${label(mine)}”` : id} cannot come back: ${values || 'a unique value'} is now used by `,
      link(recordRoute(collName, conflictingId), other ? `“${label(other)}”` : conflictingId, { class: 'conflict-link' }),
      ' — open it, change or delete it, then restore again.');
  }
  const parents = parent ? [parent] : blockers || [];
  if (kind === 'parent-deleted' && parents.length) {
    return h('li', { class: 'conflict' }, `${collName} ${id} cannot come back while its parent is deleted: `,
      parents.map((p, i) => [i ? ', ' : '', link(recordRoute(p.collection, p.id, true), `${p.collection} ${p.id}`, { class: 'conflict-link' })]),
      ' — restore the parent first.');
  }
  if (kind === 'legal-hold') return h('li', { class: 'conflict' }, `${collName} ${id} is under a legal hold.`);
  return h('li', { class: 'conflict' }, `${collName} ${id}: ${kind.replace(/-/g, ' ')}.`);
}

async function showRestoreProblem(panel, e, collName, id) {
  if (!(e instanceof ApiProblem)) { put(panel, problem(e)); return; }
  let items = [];
  if (e.type === 'restore-conflict') {
    items = await Promise.all((e.body.conflicts || []).map((c) => explainConflict(c.type, c.collection, c.id, c)));
  } else if (e.type === 'unique-conflict' || e.type === 'parent-deleted') {
    items = [await explainConflict(e.type, collName, id, e.body)];
  } else {
    put(panel, problem(e));
    return;
  }
  put(panel, h('div', { class: 'card error-card', id: 'conflict', role: 'alert' },
    h('h2', null, 'It cannot be restored yet'), h('ul', null, items)));
}

async function restoreRecord(panel, c, r, after) {
  try {
    await api('POST', recordPath(c.name, r.id, ':restore'), { headers: { 'If-Match': `"v${r.version}"` } });
    toast(`Restored ${c.name} “${label(r)}”.`, null, 6000);
    session.collections = null;
    if (after) after(); else go(recordRoute(c.name, r.id));
  } catch (e) {
    await showRestoreProblem(panel, e, c.name, r.id);
  }
}

async function restoreOperation(panel, deletionId, after) {
  try {
    const res = (await api('POST', `/v1/deletions/${encodeURIComponent(deletionId)}:restore`)).json;
    toast(`Restored the operation: ${plural(res.restored, 'record')}.`, null, 6000);
    session.collections = null;
    if (after) after(); else render();
  } catch (e) {
    await showRestoreProblem(panel, e);
  }
}

function purgeButton(panel, c, r, after) {
  if (r.legal_hold) {
    return h('button', { type: 'button', class: 'danger', disabled: true, title: 'refused while a legal hold stands' }, 'Delete permanently (held)');
  }
  return h('button', { type: 'button', class: 'danger purge', onclick: () => {
    const yes = h('button', { type: 'button', class: 'danger', id: 'confirm-purge', onclick: async () => {
      try {
        await api('POST', recordPath(c.name, r.id, ':purge'));
        toast(`${c.name} ${r.id} is gone for good.`, null, 6000);
        session.collections = null;
        if (after) after(); else go(`/trash/${c.name}`);
      } catch (e) {
        put(panel, problem(e));
      }
    } }, 'Delete permanently');
    put(panel, h('div', { class: 'card error-card', role: 'alertdialog', 'aria-labelledby': 'h-purge', id: 'purge-confirm' },
      h('h2', { id: 'h-purge' }, `Delete ${c.name} ${r.id} permanently?`),
      h('p', null, 'This cannot be undone: the record is removed from the database now and cannot be restored.'),
      h('div', { class: 'actions' }, yes, h('button', { type: 'button', onclick: () => put(panel) }, 'Cancel'))));
    yes.focus();
  } }, 'Delete permanently…');
}

// ---------------------------------------------------------------------------------------
// Recently deleted

export async function trash(view, [name], query) {
  await loadCollections();
  const visible = (session.collections || []).filter((c) => can('read_deleted', c.name));
  const panel = h('div', { id: 'panel' });
  // Filters (GET /v1/trash's own): who deleted, deleted between two days, expiring within
  // N days. They live in the route's query, so a filtered view can be bookmarked.
  const f = { by: query.get('by') || '', from: query.get('from') || '', to: query.get('to') || '', expiring: query.get('expiring') || '' };
  const dayStart = (d, plusDays = 0) => {
    const t = new Date(`${d}T00:00:00`);
    t.setDate(t.getDate() + plusDays);
    return Number.isNaN(t.getTime()) ? undefined : t.toISOString();
  };
  const params = { collection: name, limit: 50, cursor: query.get('cursor'), deleted_by: f.by.trim() };
  if (f.from) params.deleted_since = dayStart(f.from);
  if (f.to) params.deleted_before = dayStart(f.to, 1);
  if (f.expiring) params.purge_before = new Date(Date.now() + Number(f.expiring) * 86400000).toISOString();
  let page;
  try {
    page = await get('/v1/trash', params);
  } catch (e) {
    put(view, pageHeader('Recently deleted'), problem(e));
    return;
  }
  const together = {};
  for (const r of page.items) together[r.deletion_id] = (together[r.deletion_id] || 0) + 1;
  const select = h('select', { name: 'collection' },
    h('option', { value: '' }, 'all collections'),
    visible.map((c) => h('option', { value: c.name, selected: c.name === name }, c.name)));
  const by = h('input', { type: 'text', name: 'deleted_by', value: f.by, autocomplete: 'off', spellcheck: 'false' });
  const from = h('input', { type: 'date', name: 'deleted_from', value: f.from });
  const to = h('input', { type: 'date', name: 'deleted_to', value: f.to });
  const expiring = h('select', { name: 'expiring' }, [['', 'any time'], ['1', 'within 1 day'], ['3', 'within 3 days'], ['7', 'within 7 days']]
    .map(([v, t]) => h('option', { value: v, selected: f.expiring === v }, t)));
  const me = session.who ? h('button', { type: 'button', id: 'deleted-by-me', onclick: () => { by.value = session.who.key_id; } }, 'By me') : null;
  const filtered = f.by || f.from || f.to || f.expiring;
  const filters = h('form', { class: 'filters', id: 'trash-filters', role: 'search', 'aria-label': 'Filter recently deleted', onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (by.value.trim()) p.set('by', by.value.trim());
    if (from.value) p.set('from', from.value);
    if (to.value) p.set('to', to.value);
    if (expiring.value) p.set('expiring', expiring.value);
    go(`/trash${select.value ? '/' + select.value : ''}${p.toString() ? '?' + p : ''}`);
  } },
  field('Collection', select),
  field('Deleted by (key id)', by), me,
  field('Deleted on or after', from),
  field('Deleted on or before', to),
  field('Purged', expiring, 'time left before purge'),
  h('button', { type: 'submit' }, 'Apply'),
  filtered ? link(name ? `/trash/${name}` : '/trash', 'Clear filters', { id: 'clear-trash-filters' }) : null);
  const rerender = () => render();
  const rows = page.items.map((r) => {
    const c = collection(r.collection) || { name: r.collection };
    const t = timeLeft(r.purge_at);
    const rowPanel = panel;
    return h('tr', { dataset: { id: r.id, collection: r.collection }, class: t.soon ? 'soon-row' : '' },
      h('th', { scope: 'row' }, link(recordRoute(r.collection, r.id, true), `${r.collection} “${label(r)}”`)),
      h('td', null, when(r.deleted_at)),
      h('td', null, actor(r.deleted_by)),
      h('td', null, show(r.delete_reason)),
      h('td', { class: t.soon ? 'soon' : '' }, t.soon ? h('strong', null, `Expiring soon: ${t.text}`) : t.text,
        r.legal_hold ? h('span', { class: 'tag' }, 'held') : null),
      h('td', null, r.deletion_id ? link(`/deletions/${r.deletion_id}`, together[r.deletion_id] > 1 ? `with ${together[r.deletion_id] - 1} more` : 'operation') : '—'),
      h('td', { class: 'actions' },
        can('restore', r.collection) ? h('button', { type: 'button', class: 'restore', 'aria-label': `Restore ${r.collection} ${r.id}`,
          onclick: () => restoreRecord(rowPanel, c, r, rerender) }, 'Restore') : null,
        can('restore', r.collection) && r.deletion_id ? h('button', { type: 'button', class: 'restore-op', 'aria-label': `Restore operation that deleted ${r.collection} ${r.id}`,
          onclick: () => restoreOperation(rowPanel, r.deletion_id, rerender) }, 'Restore operation') : null,
        can('purge', r.collection) ? purgeButton(rowPanel, c, r, rerender) : null));
  });
  const next = new URLSearchParams(query);
  if (page.next_cursor) next.set('cursor', page.next_cursor);
  const missing = ['restore', 'purge'].filter((s) => !can(s, name));
  put(view,
    pageHeader(name ? `Recently deleted: ${name}` : 'Recently deleted'),
    filters,
    missing.length ? h('p', { class: 'muted' }, `Not offered with this key: ${missing.map((s) => `${s} (needs the ${s} scope)`).join(', ')}.`) : null,
    panel,
    page.items.length === 0 ? h('p', { id: 'trash-empty' }, filtered ? 'Nothing deleted matches these filters.' : 'Nothing deleted is waiting here.') : h('div', { class: 'scroll' }, h('table', { id: 'trash' },
      h('caption', { class: 'sr-only' }, 'Deleted records, newest first'),
      h('thead', null, h('tr', null, ['record', 'deleted', 'by', 'why', 'time left', 'deleted together', 'actions'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows))),
    page.next_cursor ? h('nav', { class: 'pager', 'aria-label': 'Pages' }, link(`/trash${name ? '/' + name : ''}?${next}`, 'Next page')) : null);
}

// ---------------------------------------------------------------------------------------
// A deletion operation

export async function deletion(view, [id]) {
  const op = await get(`/v1/deletions/${encodeURIComponent(id)}`);
  const panel = h('div', { id: 'panel' });
  const sinks = [];
  for (const [sink, s] of Object.entries(op.propagation || {})) {
    if (sink === 'webhooks') {
      for (const [endpoint, w] of Object.entries(s || {})) sinks.push([`webhook ${endpoint}`, w]);
    } else {
      sinks.push([sink, s]);
    }
  }
  const allDone = sinks.every(([, s]) => s && s.status === 'done');
  const pending = op.status !== 'done' || sinks.some(([, s]) => s && s.status === 'pending');
  put(view,
    pageHeader(`Deletion ${op.id}`),
    h('p', { id: 'gone', class: allDone && op.status === 'done' ? 'ok' : 'warn' },
      allDone && op.status === 'done' ? 'Gone everywhere: every sink has applied this deletion.'
        : op.status !== 'done' ? 'Still running: the eventual cascade has not finished.' : 'Still propagating to some sinks (see below).'),
    h('dl', { class: 'fields' },
      h('dt', null, 'status'), h('dd', { id: 'op-status' }, op.status),
      h('dt', null, 'root'), h('dd', null, link(recordRoute(op.root.collection, op.root.id, true), `${op.root.collection} ${op.root.id}`)),
      h('dt', null, 'by'), h('dd', null, actor(op.actor)),
      h('dt', null, 'why'), h('dd', null, show(op.reason)),
      h('dt', null, 'when'), h('dd', null, when(op.created_at)),
      h('dt', null, 'restorable until'), h('dd', null, when(op.restorable_until)),
      h('dt', null, 'counts'), h('dd', null, Object.entries(op.counts || {}).map(([k, n]) => `${k}: ${n}`).join(', '))),
    can('restore') ? h('div', { class: 'actions' }, h('button', { type: 'button', id: 'restore-op', onclick: () => restoreOperation(panel, op.id) }, 'Restore the whole operation')) : null,
    panel,
    h('section', { 'aria-labelledby': 'h-prop' }, h('h2', { id: 'h-prop' }, 'Propagation'),
      h('table', { id: 'propagation' }, h('caption', { class: 'sr-only' }, 'Propagation per sink'),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'sink'), h('th', { scope: 'col' }, 'status'), h('th', { scope: 'col' }, 'detail'))),
        h('tbody', null, sinks.map(([name, s]) => h('tr', null, h('th', { scope: 'row' }, name),
          h('td', { class: s.status === 'done' ? 'ok' : s.status === 'failed' ? 'error' : 'warn' }, s.status === 'done' ? '✓ done' : s.status),
          h('td', null, s.last_error || '')))))),
    h('section', { 'aria-labelledby': 'h-records' }, h('h2', { id: 'h-records' }, `Records (${op.records.length})`),
      h('ul', { id: 'op-records' }, op.records.map((r) => h('li', null, link(recordRoute(r.collection, r.id, true), `${r.collection} ${r.id}`))))));
  if (pending) {
    // While a cascade or a sink is behind, look again in a moment (only if still here).
    const here = location.hash;
    setTimeout(() => { if (location.hash === here) render(); }, 2000);
  }
}
