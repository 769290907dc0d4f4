#!/usr/bin/env bash
# Placeholder until the PostgreSQL store lands: runs the command as is.
exec "$@"
