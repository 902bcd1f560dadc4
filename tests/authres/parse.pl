#!/usr/bin/perl
# Parses Authentication-Results values with the independent Mail::AuthenticationResults
# (Debian's libmail-authenticationresults-perl): values on stdin separated by NUL, one JSON
# object per value on stdout.
use strict;
use warnings;
use JSON::PP;
use Mail::AuthenticationResults::Parser;

local $/ = "\0";
while (my $value = <STDIN>) {
    chomp $value;
    next if $value eq '';
    my $out = eval {
        my $parsed = Mail::AuthenticationResults::Parser->new()->parse($value);
        my @results;
        for my $entry (@{ $parsed->children() }) {
            my ($reason, @properties);
            for my $child (@{ $entry->children() }) {
                if ($child->key eq 'reason') {
                    $reason = $child->value;
                } else {
                    my ($type, $name) = split /\./, $child->key, 2;
                    push @properties, [$type, $name, $child->value];
                }
            }
            push @results, { method => $entry->key, result => $entry->value,
                             reason => $reason, properties => \@properties };
        }
        +{ authserv_id => $parsed->value->value, results => \@results };
    };
    $out = { error => "$@" } unless $out;
    print JSON::PP->new->canonical->encode($out), "\n";
}
