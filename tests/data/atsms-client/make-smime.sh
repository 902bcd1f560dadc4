#!/usr/bin/env bash
# Makes smime-device.{key,crt}.pem and smime-signed.eml: a device certificate as AT-SMS makes
# them (self-signed P-256, CN=<did>, SAN URI at://<did>/at.atsms.x509/<fingerprint>, EKU
# emailProtection) and a detached S/MIME signature (multipart/signed, signed attributes, as
# ordinary S/MIME agents make it) by OpenSSL. Run once; the outputs are committed.
set -euo pipefail
cd "$(dirname "$0")"
did=did:plc:smimesmimesmimesmimesmim
openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out smime-device.key.pem
point=$(openssl ec -in smime-device.key.pem -pubout -outform DER 2>/dev/null | tail -c 65 | xxd -p | tr -d '\n')
fp=$(printf '%s' "$point" | xxd -r -p | sha256sum | cut -d' ' -f1)
openssl req -new -x509 -key smime-device.key.pem -days 3650 -subj "/CN=$did" \
  -set_serial 0x1234567890abcdef \
  -addext "subjectAltName=URI:at://$did/at.atsms.x509/$fp" \
  -addext "extendedKeyUsage=emailProtection" \
  -addext "keyUsage=digitalSignature" \
  -addext "basicConstraints=CA:FALSE" -out smime-device.crt.pem
printf 'Content-Type: text/plain; charset=utf-8\r\n\r\nSigned by a device, detached.\r\n' > content.txt
openssl cms -sign -binary -in content.txt -signer smime-device.crt.pem -inkey smime-device.key.pem \
  -md sha256 -nosmimecap | sed 's/\r*$/\r/' > smime-body.eml
{ printf 'From: <plc.smimesmimesmimesmimesmim@example.net>\r\nTo: <bob@example.net>\r\nSubject: S/MIME\r\n'; cat smime-body.eml; } > smime-signed.eml
echo "$fp" > smime-device.fp
rm content.txt smime-body.eml
