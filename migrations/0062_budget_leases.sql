-- AwoooP model path: budget leases (model::budget_lease, docs/model.md "Budget leases").
--
-- A process leases a slice of a ledger row's remaining budget in one transaction and reserves
-- within it in memory, so most reservations never touch the hot ledger row. The hard cap
-- stays in PostgreSQL: a lease is taken by the same conditional UPDATE as a reservation
-- (`spent + reserved + slice <= limit`), and a leased slice is part of the row's
-- `reserved_tokens`/`reserved_micros` until it is spent (flushed settlements move it to
-- `spent_*`) or returned. So at every instant: spent + (single reservations + leases) <= limit
-- at admission, exactly as before.
--
-- A lease lives until `expires_at`; its holder renews it at every flush. A lease whose holder
-- died is reaped by the next acquisition on the row: charged in full (fail closed: calls
-- admitted inside it may have been billed), exactly like an expired reservation.

CREATE TABLE budget_leases (
    project_id      text NOT NULL REFERENCES projects (project_id),
    lease_id        uuid NOT NULL,
    scope           text NOT NULL,
    period_start    timestamptz NOT NULL,
    -- Who holds it (host:pid:uuid), for operators; never used for authorisation.
    holder          text NOT NULL,
    -- What the lease currently holds on the ledger row (part of its reserved_*).
    tokens          bigint NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    micros          bigint NOT NULL DEFAULT 0 CHECK (micros >= 0),
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'returned', 'expired')),
    -- The holder saw the row's latest recall at this time (and returned its unused part).
    acked_at        timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    renewed_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    PRIMARY KEY (project_id, lease_id),
    FOREIGN KEY (project_id, scope, period_start) REFERENCES budget_ledger (project_id, scope, period_start)
);
CREATE INDEX budget_leases_active ON budget_leases (project_id, scope, period_start) WHERE state = 'active';

-- A caller refused for lack of budget while other processes hold leases asks them to give
-- back their unused parts (they see it at their next flush), so the last units are not
-- stranded in another process's lease.
ALTER TABLE budget_ledger ADD COLUMN lease_recall_at timestamptz;

-- Reservations admitted inside a lease are journalled (settled or expired) in batches at the
-- holder's flush; they carry their lease.
ALTER TABLE budget_reservations ADD COLUMN lease_id uuid;

ALTER TABLE budget_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE budget_leases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON budget_leases USING (project_id = awooop_current_project())
    WITH CHECK (project_id = awooop_current_project());

GRANT SELECT, INSERT ON budget_leases TO awooop_app;
GRANT UPDATE (tokens, micros, state, acked_at, renewed_at, expires_at, ended_at) ON budget_leases TO awooop_app;
