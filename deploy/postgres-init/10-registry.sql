-- The schema registry's own database, beside the pipeline's (docker-compose.yml).
CREATE DATABASE registry;
