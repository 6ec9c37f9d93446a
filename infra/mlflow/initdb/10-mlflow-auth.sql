-- The postgres image creates POSTGRES_DB (= mlflow, the tracking store) on first start; the
-- basic-auth app keeps its users and permissions in a second database.
CREATE DATABASE mlflow_auth;
