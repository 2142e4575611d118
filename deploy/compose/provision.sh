#!/bin/sh
# One-shot provisioning for the compose demo, run as root by the `provision` service: the operator's part.
# Each site made its own key pair in its own volume (keygen-site-*); only its site.pub reaches this container,
# in /exchange/<site>/. This creates the CA once, registers each site's public key, and hands back the CA
# certificate. No site's private key is ever here. Idempotent; a site whose key changed is refused by
# `fl-server site add` until the operator revokes the old key.
set -eu
STATE=/var/lib/fedhaven
if [ ! -f "$STATE/pki/ca.pem" ]; then
  fl-server init --state-dir "$STATE" --name coordinator --name localhost --listen 0.0.0.0:9092
fi
for site in site-a site-b site-c; do
  cmp -s "/exchange/$site/site.pub" "$STATE/sites/$site/site.pub" || fl-server site add "$site" --state-dir "$STATE" --public-key "/exchange/$site/site.pub"
  cp "$STATE/pki/ca.pem" "/exchange/$site/ca.pem"
  chmod 0644 "/exchange/$site/ca.pem"
done
chown -R fedhaven "$STATE"   # the coordinator runs as the image's fedhaven user; the state stays 0700
