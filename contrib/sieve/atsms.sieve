# atsms-milter for Sieve: files mail whose AT-SMS signatures THIS host found forged into Junk.
#
# Only the Authentication-Results field carrying this host's authserv-id counts (set
# "mx\\.example\\.net" below to policy.authserv_id, dots escaped): the MTA removes incoming
# fields claiming that id, while a relay on the way may write its own field saying
# atsms=fail, which must not move genuine mail. A naive `header :contains
# "Authentication-Results" "atsms=fail"` does exactly that. A message with one failing and one
# passing signature passes: it stays.
#
# Dovecot Pigeonhole: a sieve_before script (or the user's own), extensions fileinto and regex.

require ["fileinto", "regex"];

if allof (
    header :regex "Authentication-Results"
        "^[[:space:]]*mx\\.example\\.net([[:space:]]+[0-9]+)?[[:space:]]*;(.*[;[:space:]])?atsms=fail([;[:space:]]|$)",
    not header :regex "Authentication-Results"
        "^[[:space:]]*mx\\.example\\.net([[:space:]]+[0-9]+)?[[:space:]]*;(.*[;[:space:]])?atsms=pass([;[:space:]]|$)"
) {
    fileinto "Junk";
    stop;
}
