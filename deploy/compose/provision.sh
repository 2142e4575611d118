#!/bin/sh
# One-shot provisioning for the compose demo: a coordinator state directory and three site bundles.
# Idempotent: does nothing once the CA exists.
set -eu
STATE=/var/lib/fedhaven
if [ ! -f "$STATE/pki/ca.pem" ]; then
  fl-server init --state-dir "$STATE" --name coordinator --name localhost --listen 0.0.0.0:9092
  for site in site-a site-b site-c; do
    fl-server site add "$site" --state-dir "$STATE"
  done
fi
