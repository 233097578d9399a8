-- The last whole-chain check of the audit log (GET /v1/audit/verify): one row (id 1),
-- replaced by each check, whichever replica ran it, so every replica answers the same.
-- entries is null when the chain is broken (only the entries before the break were
-- verified); broken_seq is the first entry that fails (for a log cut short, the first
-- missing one) and broken_tenant that entry's tenant, so a tenant is told the entry only
-- when it is its own.
create table audit_checks (
    id            integer primary key check (id = 1),
    checked_at    bigint not null,
    duration_ms   bigint not null,
    entries       bigint,
    head_seq      bigint not null,
    broken_seq    bigint,
    broken_tenant text collate "C",
    problem       text
);
