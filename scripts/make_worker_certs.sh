#!/usr/bin/env bash
# Makes the certificates of mutual TLS between a driver and its remote TFF workers (openssl):
#   OUT/ca.pem, OUT/ca.key        the run's CA (keep ca.key off the workers)
#   OUT/driver.pem, driver.key    the driver's client certificate
#   OUT/worker.pem, worker.key    the workers' server certificate, valid for every HOST given
#                                 (names or IP addresses, as the driver's --workers dials them)
# Copy ca.pem, worker.pem and worker.key to each worker (`experiments.worker --tls_dir=DIR`), and
# ca.pem, driver.pem and driver.key to the driver (`experiments.train --workers_tls_dir=DIR`).
# A client without a certificate signed by this CA is refused by the workers.
# Usage: scripts/make_worker_certs.sh OUT HOST [HOST...]   (refuses an OUT that holds a ca.key)
set -euo pipefail
out="${1:?usage: $0 OUT HOST [HOST...]}"; shift
[ "$#" -ge 1 ] || { echo "$0: name at least one worker HOST (name or IP address)" >&2; exit 2; }
[ -e "$out/ca.key" ] && { echo "$0: $out already holds a CA (ca.key); choose another folder" >&2; exit 2; }
mkdir -p "$out"
chmod 700 "$out"
days=365
san="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san+=",IP:$host"; else san+=",DNS:$host"; fi
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=fedpara-tff run CA" -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
for side in driver worker; do
  ext="$out/$side.ext"
  if [ "$side" = worker ]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' > "$ext"
  fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=fedpara-tff $side" \
    -keyout "$out/$side.key" -out "$out/$side.csr" 2>/dev/null
  openssl x509 -req -in "$out/$side.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$out/$side.pem" 2>/dev/null
  rm -f "$out/$side.csr" "$ext"
done
rm -f "$out/ca.srl"
chmod 600 "$out"/*.key
echo "certificates in $out: ca.pem; driver.pem/driver.key; worker.pem/worker.key (for $*)"
