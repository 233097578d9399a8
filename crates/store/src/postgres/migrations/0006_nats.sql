-- Leases: one holder at a time for work shared by the replicas (the NATS relay first).
-- A holder renews its lease while it runs; once expires_at (µs since the epoch, the
-- holders' clock) has passed, another replica may claim it and take the work over.
create table leases (
    name       text collate "C" primary key,
    holder     text not null,
    expires_at bigint not null
);

-- How far each relay to an outside sink has delivered the outbox: every event up to seq
-- is delivered. Written only by the holder of the lease of the same name, never backwards.
-- The outbox clean-up keeps every event past the position of a relay whose lease was
-- held within the outbox retention (a release only expires the lease, for that reason).
create table relay_positions (
    name       text collate "C" primary key,
    seq        bigint not null
);
