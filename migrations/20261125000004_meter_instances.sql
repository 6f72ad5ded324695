-- Sidecars sharing the database make themselves known (src/bill.rs): each one's roller writes its row every
-- second with the billing hour of the oldest record it has journaled but not shipped yet. A live sidecar
-- holding records of an hour keeps that hour from closing; one not seen for two minutes holds nothing.
CREATE TABLE meter_instances (
    instance_id           uuid        PRIMARY KEY,
    last_seen             timestamptz NOT NULL,
    oldest_unshipped_hour timestamptz
);
