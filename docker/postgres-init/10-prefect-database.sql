-- The Prefect server's database, beside Label Studio's (docker-compose.yml; the native stack,
-- cxrkit/services/stack.py, creates the same). Run by the postgres image on the volume's first start.
CREATE DATABASE prefect;
