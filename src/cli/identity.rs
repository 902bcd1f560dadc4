//! `atsms-milter resolve` and `route`: what the resolver and the routing tables say of an
//! identity or an address, without a running daemon.

use std::sync::Arc;

use super::*;

#[derive(serde::Serialize)]
struct Resolution {
    did: String,
    handle: Option<String>,
    handle_claimed: Option<String>,
    key: Option<String>,
    alg: Option<&'static str>,
    pds: Option<String>,
    mail_service: Option<String>,
    source: ResolutionSource,
}

#[derive(serde::Serialize)]
struct ResolutionSource {
    /// The URL the DID document came from.
    document: String,
    /// How the handle was resolved to the DID (`dns` or `https`), when it was.
    handle: Option<crate::atproto::identity::HandleSource>,
    /// Where the key came from: the `#atproto` verification method.
    key: Option<String>,
}

pub(super) fn resolve(args: ResolveArgs) -> ExitCode {
    let resolver = match args.resolver.resolver() {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(exit::USAGE, e),
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let timeout = args.resolver.config().timeout();
    let outcome = rt.block_on(async {
        tokio::time::timeout(timeout * 3, async {
            let input = args.identity.trim();
            let did = if input.starts_with("did:") {
                input.to_string()
            } else {
                resolver
                    .resolve_handle(input)
                    .await
                    .map_err(|e| (e.is_transient(), e.to_string()))?
                    .0
                    .clone()
            };
            let resolved = resolver
                .resolve_did(&did)
                .await
                .map_err(|e| (e.is_transient(), e.to_string()))?;
            let checked = resolver.checked_handle(&resolved.value.document).await;
            Ok::<_, (bool, String)>((resolved.value, checked))
        })
        .await
        .unwrap_or_else(|_| Err((true, "timed out".to_string())))
    });
    let (resolved, checked) = match outcome {
        Ok(found) => found,
        Err((transient, reason)) => {
            return fail(
                if transient {
                    exit::TEMPFAIL
                } else {
                    exit::NO_PASS
                },
                reason,
            );
        }
    };
    let document = &resolved.document;
    let key = document.key("atproto").ok();
    let resolution = Resolution {
        did: document.id.clone(),
        handle: checked.as_ref().map(|(h, _)| h.clone()),
        handle_claimed: document.handle_claim(),
        key: key.as_ref().map(|k| k.to_multikey()),
        alg: key.as_ref().map(|k| k.alg().jws_name()),
        pds: document.pds().map(str::to_string),
        mail_service: document.mail_service().map(str::to_string),
        source: ResolutionSource {
            document: resolved.source.clone(),
            handle: checked.as_ref().map(|(_, s)| *s),
            key: key.as_ref().map(|_| format!("{}#atproto", document.id)),
        },
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resolution).unwrap_or_default()
        );
    } else {
        let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
        println!("did:          {}", resolution.did);
        println!("handle:       {}", show(&resolution.handle));
        println!("claimed:      {}", show(&resolution.handle_claimed));
        println!(
            "key:          {} {}",
            show(&resolution.key),
            resolution.alg.unwrap_or("")
        );
        println!("pds:          {}", show(&resolution.pds));
        println!("mail service: {}", show(&resolution.mail_service));
        println!("document:     {}", resolution.source.document);
    }
    if resolution.key.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::NO_PASS)
    }
}

#[derive(serde::Serialize)]
struct RouteMaps {
    atsms_alias: String,
    atsms_transport: String,
    atsms_mailbox: String,
}

#[derive(serde::Serialize)]
struct Route {
    address: String,
    /// The DID the address names, if it is a DID mailbox address.
    did: Option<String>,
    /// The document's `#atsms_mail` endpoint as written.
    endpoint: Option<String>,
    /// Whether this host may keep the mailbox (null: the document could not be had).
    consent: Option<bool>,
    /// Whether the endpoint's host publishes `_atsms-mail` TXT `v=atsms1` (null: no
    /// `smtp://` endpoint with a host name).
    mailhost_txt: Option<bool>,
    maps: RouteMaps,
}

pub(super) fn route(args: RouteArgs) -> ExitCode {
    use crate::policy::routing::{self, Consent, DidAddress};
    let resolver = match args.resolver.resolver() {
        Ok(r) => Arc::new(r),
        Err(e) => return fail(exit::USAGE, e),
    };
    let config = ConfigArgs { config: None }.load().unwrap_or_default();
    let inbox = config.inbox;
    let hosts = if args.inbox_hosts.is_empty() {
        inbox.hosts()
    } else {
        args.inbox_hosts.clone()
    };
    let alias_domains = if args.alias_domains.is_empty() {
        config.routing.alias_domains
    } else {
        args.alias_domains.clone()
    };
    let Ok(rt) = runtime() else {
        return fail(exit::SOFTWARE, "cannot start the async runtime");
    };
    let timeout = args.resolver.config().timeout();
    let router = routing::Router::new(resolver.clone(), &hosts, timeout)
        .with_atsms_records(inbox.atsms_records)
        .with_public_url(config.xrpc.public_url.as_ref())
        .with_alias_domains(&alias_domains);
    let address = args.address.trim().to_string();
    let route = rt.block_on(async {
        let parsed = DidAddress::parse(&address);
        let mut endpoint = None;
        let mut mailhost_txt = None;
        let mut consent = None;
        if let Some(parsed) = &parsed {
            if let Ok(Ok(found)) =
                tokio::time::timeout(timeout, resolver.resolve_did(&parsed.did)).await
            {
                let document = &found.value.document;
                endpoint = document.mail_service().map(str::to_string);
                if let Some(crate::atproto::identity::did_doc::MailEndpoint::Smtp {
                    host: crate::atproto::identity::did_doc::MailHost::Name(host),
                    ..
                }) = document.mail_endpoint()
                {
                    mailhost_txt = Some(resolver.mail_host_vouches(&host).await);
                }
            }
            consent = match router.consent(parsed).await {
                Consent::Given => Some(true),
                Consent::Refused => Some(false),
                Consent::Unknown(_) => None,
            };
        }
        Route {
            did: parsed.map(|p| p.did),
            endpoint,
            consent,
            mailhost_txt,
            maps: RouteMaps {
                atsms_alias: router.lookup(routing::ALIAS, &address).await.to_socketmap(),
                atsms_transport: router
                    .lookup(routing::TRANSPORT, &address)
                    .await
                    .to_socketmap(),
                atsms_mailbox: router
                    .lookup(routing::MAILBOX, &address)
                    .await
                    .to_socketmap(),
            },
            address: address.clone(),
        }
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&route).unwrap_or_default()
        );
    } else {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        println!("address:         {}", route.address);
        println!("did:             {}", show(&route.did));
        println!("endpoint:        {}", show(&route.endpoint));
        println!("consent here:    {}", yes_no(route.consent));
        println!("_atsms-mail TXT: {}", yes_no(route.mailhost_txt));
        println!("atsms_alias:     {}", route.maps.atsms_alias);
        println!("atsms_transport: {}", route.maps.atsms_transport);
        println!("atsms_mailbox:   {}", route.maps.atsms_mailbox);
    }
    ExitCode::SUCCESS
}
