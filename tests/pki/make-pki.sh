#!/bin/sh
# Builds the test PKI with the real openssl CLI into $1:
#   root.pem/key           test root CA            inter.pem/key   intermediate CA (signed by root)
#   release.pem/key        valid signer             expired.pem     validity ended in 2021
#   future.pem             valid from 2099          revoked.pem     revoked in inter's CRL
#   codesign.pem           EKU codeSigning only     other-root.pem  unrelated CA (+ other.pem signer)
#   rsa-recipient.pem/key  EC recipient ec-recipient.pem/key
#   server.pem/key         TLS server 127.0.0.1     client.pem/key  TLS client certificate
#   inter-server.pem/key   TLS server 127.0.0.1 signed by inter
#   keyring.pem            root only                keyring-crl.pem root + CRLs of root and inter
#   ecu-main, ecu-display, ecu-pay, ecu-spare (.pem/.key)  ECU identities (TLS server and client), signed by root
#   ecu-rogue.pem/key      an ECU identity from other-root
set -eu
out=$1
mkdir -p "$out"
export CA=root-ca
cd "$out"
cat > ca.cnf <<'CNF'
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = ./$ENV::CA
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_crl_days = 36500
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
organizationName = optional
commonName = supplied
[ req ]
distinguished_name = dn
[ dn ]
[ v3_ca ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ v3_leaf ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_codesign ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_server ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[ v3_client ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
[ v3_ecu ]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
[ v3_recipient ]
basicConstraints = CA:false
keyUsage = critical, keyEncipherment, keyAgreement
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
newca() { mkdir -p "$1/newcerts"; : > "$1/index.txt"; echo 1000 > "$1/serial"; echo 1000 > "$1/crlnumber"; }
key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null; }
csr() { openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" -config ca.cnf; }
sign() { # sign CA NAME EXT START END
  CA=$1 openssl ca -batch -config ca.cnf -extensions "$3" -startdate "$4" -enddate "$5" -in "$2.csr" -out "$2.pem" -notext 2>/dev/null
}
root() { # root NAME SUBJECT (valid 2015-2100, so past signing times can be tested)
  key "$1"; csr "$1" "$2"; newca "$1-ca"
  CA=$1-ca openssl ca -batch -selfsign -config ca.cnf -keyfile "$1.key" -extensions v3_ca \
    -startdate 20150101000000Z -enddate 21001231235959Z -in "$1.csr" -out "$1.pem" -notext 2>/dev/null
}
root root "/O=rota test/CN=rota Test Root CA"
root other-root "/O=somebody else/CN=Unrelated Root CA"
key inter; csr inter "/O=rota test/CN=rota Test Intermediate CA"
CA=root-ca openssl ca -batch -config ca.cnf -keyfile root.key -cert root.pem -extensions v3_ca -startdate 20200101000000Z -enddate 21001231235959Z -in inter.csr -out inter.pem -notext 2>/dev/null
newca inter-ca
leaf() { # leaf NAME CN EXT START END [CA]
  key "$1"; csr "$1" "/O=rota test/CN=$2"
  ca=${6:-inter}
  CA=$ca-ca openssl ca -batch -config ca.cnf -keyfile "$ca.key" -cert "$ca.pem" -extensions "$3" -startdate "$4" -enddate "$5" -in "$1.csr" -out "$1.pem" -notext 2>/dev/null
}
leaf release "rota Release Signer" v3_leaf 20200101000000Z 20991231235959Z
leaf second "rota Second Signer" v3_leaf 20200101000000Z 20991231235959Z
leaf expired "rota Expired Signer" v3_leaf 20200101000000Z 20210101000000Z
leaf future "rota Future Signer" v3_leaf 20990101000000Z 20991231235959Z
leaf revoked "rota Revoked Signer" v3_leaf 20200101000000Z 20991231235959Z
leaf codesign "rota Codesign Signer" v3_codesign 20200101000000Z 20991231235959Z
leaf rsa-recipient "rota RSA Recipient" v3_recipient 20200101000000Z 20991231235959Z root
leaf server "127.0.0.1" v3_server 20200101000000Z 20991231235959Z root
leaf inter-server "127.0.0.1" v3_server 20200101000000Z 20991231235959Z
leaf client "rota Test Client" v3_client 20200101000000Z 20991231235959Z root
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec-recipient.key 2>/dev/null
csr ec-recipient "/O=rota test/CN=rota EC Recipient"
CA=root-ca openssl ca -batch -config ca.cnf -keyfile root.key -cert root.pem -extensions v3_recipient -startdate 20200101000000Z -enddate 20991231235959Z -in ec-recipient.csr -out ec-recipient.pem -notext 2>/dev/null
leaf other "Unrelated Signer" v3_leaf 20200101000000Z 20991231235959Z other-root
for e in main display pay spare; do leaf "ecu-$e" "rota ECU $e" v3_ecu 20200101000000Z 20991231235959Z root; done
leaf ecu-rogue "rota ECU main" v3_ecu 20200101000000Z 20991231235959Z other-root
CA=inter-ca openssl ca -batch -config ca.cnf -keyfile inter.key -cert inter.pem -revoke revoked.pem 2>/dev/null
CA=inter-ca openssl ca -batch -config ca.cnf -keyfile inter.key -cert inter.pem -gencrl -out inter.crl 2>/dev/null
CA=root-ca openssl ca -batch -config ca.cnf -keyfile root.key -cert root.pem -gencrl -out root.crl 2>/dev/null
cp root.pem keyring.pem
cat root.pem root.crl inter.crl > keyring-crl.pem
cat root.pem inter.pem > keyring-chain.pem
rm -f ./*.csr
