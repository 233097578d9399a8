-- Configured webhook endpoints and how far the outbox has been fanned out to each.
-- removed_at: when it left the config (deliveries stay listed; fan-out, clean-up and the
-- backlog skip it). tenant: the tenant it is confined to (null: every tenant).
create table webhook_endpoints (
    id              text collate "C" primary key,
    url             text not null,
    cursor          bigint not null,
    disabled_at     bigint,
    disabled_reason text,
    removed_at      bigint,
    tenant          text collate "C"
);

-- One row per (endpoint, event): the delivery and its attempts. Only the oldest pending
-- delivery of a lane (record_key = tenant/collection/record_id) is sent, so each endpoint
-- sees a record's events in order. last_error is an error class, never transport text.
create table webhook_deliveries (
    id              text collate "C" primary key,
    endpoint_id     text collate "C" not null,
    event_seq       bigint not null,
    event_id        text not null,
    event_type      text not null,
    tenant          text collate "C" not null,
    record_key      text collate "C" not null,
    status          text not null,     -- pending | delivered | failed | cancelled
    attempts        integer not null,
    next_attempt_at bigint not null,
    last_status     integer,
    last_error      text,
    last_attempt_at bigint,
    delivered_at    bigint,
    created_at      bigint not null,
    unique (endpoint_id, event_seq)
);
create index webhook_due on webhook_deliveries (next_attempt_at) where status = 'pending';
create index webhook_queue on webhook_deliveries (endpoint_id, record_key, event_seq) where status = 'pending';
create index webhook_tenant on webhook_deliveries (tenant, id);
create index webhook_event on webhook_deliveries (event_seq);
