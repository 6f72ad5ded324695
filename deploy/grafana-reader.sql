-- Run once by Postgres's entrypoint in deploy/compose.yaml: the role Grafana's Postgres data source uses
-- (dashboards/provisioning/datasources). Read-only; the tables come later (the sidecar's migrations), so the
-- grant is a default privilege of their owner, which covers every table — fine for the demo stack. In
-- production grant only the bill (README, "Grafana dashboards"): SELECT ON hourly_bill, hourly_model_bill,
-- bill_hours.
CREATE ROLE grafana_reader LOGIN PASSWORD 'change-me';
GRANT CONNECT ON DATABASE deepseek_meter TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE deepseek_meter IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
