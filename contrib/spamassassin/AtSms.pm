# atsms-milter for SpamAssassin: AT-SMS results of THIS host's Authentication-Results field.
#
# Reads only the field carrying this host's authserv-id (atsms_authserv_id, atsms-milter's
# policy.authserv_id): the MTA removes incoming fields claiming that id, so a relay's field
# saying atsms=fail scores nothing. Of the results in our field a pass wins (one failing and
# one passing signature pass), as in atsms-milter's own decision.
#
# Eval rules: check_atsms_pass(), check_atsms_fail(), check_atsms_label('value'),
# check_atsms_young(). The rules using them are in atsms.cf. The verified DID is added to the
# message's metadata as the tag ATSMSDID (add_header all AtSms-DID _ATSMSDID_).
#
# Install: copy AtSms.pm and atsms.cf to /etc/spamassassin/, set atsms_authserv_id in
# atsms.cf, `spamassassin --lint`, reload spamd.

package Mail::SpamAssassin::Plugin::AtSms;

use strict;
use warnings;

use Mail::SpamAssassin::Plugin;
our @ISA = qw(Mail::SpamAssassin::Plugin);

sub new {
    my ($class, $mailsa) = @_;
    my $self = $class->SUPER::new($mailsa);
    bless($self, $class);
    $self->register_eval_rule('check_atsms_pass', $Mail::SpamAssassin::Conf::TYPE_HEAD_EVALS);
    $self->register_eval_rule('check_atsms_fail', $Mail::SpamAssassin::Conf::TYPE_HEAD_EVALS);
    $self->register_eval_rule('check_atsms_label', $Mail::SpamAssassin::Conf::TYPE_HEAD_EVALS);
    $self->register_eval_rule('check_atsms_young', $Mail::SpamAssassin::Conf::TYPE_HEAD_EVALS);
    $mailsa->{conf}->{parser}->register_commands([{
        setting => 'atsms_authserv_id',
        default => '',
        type => $Mail::SpamAssassin::Conf::CONF_TYPE_STRING,
    }]);
    return $self;
}

# An Authentication-Results value split at its top-level ';' (RFC 8601 section 2.2): not
# inside quoted strings; comments removed.
sub _split_resinfo {
    my ($value) = @_;
    my @parts;
    my ($current, $depth, $quoted, $escaped) = ('', 0, 0, 0);
    for my $c (split //, $value) {
        my $keep = $c;
        if ($escaped) { $escaped = 0; $keep = '' if $depth; }
        elsif ($c eq '\\' && ($quoted || $depth)) { $escaped = 1; $keep = '' if $depth; }
        elsif ($quoted) { $quoted = 0 if $c eq '"'; }
        elsif ($depth) { $depth++ if $c eq '('; $depth-- if $c eq ')'; $keep = ''; }
        elsif ($c eq '"') { $quoted = 1; }
        elsif ($c eq '(') { $depth = 1; $keep = ' '; }
        elsif ($c eq ';') { push @parts, $current; $current = ''; $keep = ''; }
        $current .= $keep;
    }
    push @parts, $current;
    return @parts;
}

# The atsms results of our field(s), computed once per message.
sub _results {
    my ($self, $pms) = @_;
    return $pms->{atsms_results} if defined $pms->{atsms_results};
    my $ours = lc($pms->{conf}->{atsms_authserv_id} // '');
    my @results;
    if ($ours ne '') {
        for my $value ($pms->get_message()->get_header('Authentication-Results', 1)) {
            $value =~ s/\r?\n[ \t]+/ /g;
            my @parts = _split_resinfo($value);
            my ($id) = ($parts[0] // '') =~ /^\s*(\S+)/;
            next unless defined $id && lc($id) eq $ours;
            for my $resinfo (@parts[1 .. $#parts]) {
                my ($method, $result) = $resinfo =~ /^\s*([\w.-]+)\s*=\s*([\w-]+)/;
                next unless defined $method && lc($method) eq 'atsms';
                my ($did) = $resinfo =~ /header\.d\s*=\s*"?([^"\s;]+)"?/;
                my @labels = $resinfo =~ /policy\.atsms-label\s*=\s*"?([^"\s]+)"?/g;
                push @results, {
                    result => lc($result),
                    did => $did,
                    labels => \@labels,
                    young => ($resinfo =~ /policy\.atsms-age\s*=\s*young/) ? 1 : 0,
                };
            }
        }
    }
    $pms->{atsms_results} = \@results;
    my ($pass) = grep { $_->{result} eq 'pass' } @results;
    $pms->set_tag('ATSMSDID', $pass && defined $pass->{did} ? $pass->{did} : 'none');
    return \@results;
}

sub _pass {
    my ($self, $pms) = @_;
    my ($pass) = grep { $_->{result} eq 'pass' } @{$self->_results($pms)};
    return $pass;
}

sub check_atsms_pass {
    my ($self, $pms) = @_;
    return $self->_pass($pms) ? 1 : 0;
}

sub check_atsms_fail {
    my ($self, $pms) = @_;
    return 0 if $self->_pass($pms);
    return (grep { $_->{result} eq 'fail' } @{$self->_results($pms)}) ? 1 : 0;
}

sub check_atsms_label {
    my ($self, $pms, $label) = @_;
    my $pass = $self->_pass($pms) or return 0;
    return (grep { $_ eq $label } @{$pass->{labels}}) ? 1 : 0;
}

sub check_atsms_young {
    my ($self, $pms) = @_;
    my $pass = $self->_pass($pms) or return 0;
    return $pass->{young};
}

1;
