//! Access tokens bound to the agent's key (RFC 9449, [`crate::dpop`]): the proof a bound
//! token needs on every use, and the key a token request binds its new token to.

use super::*;
use crate::dpop::{self as proofs, DpopMode, Expected, Proof, ProofError, DPOP_HEADER};
use crate::token::TokenClaims;

/// The request as the agent sent it (what a DPoP proof's `htm` and `htu` name): for an agent
/// endpoint reached through the MCP server, the MCP request, not the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target (its path; the scheme and host come from `public_base_url` or `Host`).
    pub uri: &'a Uri,
}

fn invalid(e: ProofError) -> Refusal {
    Refusal::plain(ErrorCode::DpopProofInvalid, e.to_string()).standing(Standing::Dpop(e.reason()))
}

impl Paywall {
    /// The claims of an access token, its binding honoured: a bound token must come as
    /// `Authorization: DPoP` with a fresh proof by its key for this very request (checked,
    /// then its `jti` spent in the store); an unbound one as `Bearer`, and not at all when
    /// the gateway takes only bound tokens. Returns the proof a bound token came with.
    pub(super) async fn token_claims(
        &self,
        token: &str,
        dpop_scheme: bool,
        line: RequestLine<'_>,
        headers: &HeaderMap,
    ) -> Result<(TokenClaims, Option<Proof>), Refusal> {
        let claims = self
            .0
            .token_key
            .verify(token, self.0.settings.clock.now_secs())
            .map_err(|e| match e {
                TokenError::Invalid => Refusal::new(
                    ErrorCode::TokenInvalid,
                    "the access token is not valid here",
                ),
                TokenError::Expired => Refusal::new(
                    ErrorCode::TokenExpired,
                    "the access token expired: renew it or top up again",
                ),
            })?;
        let Some(cnf) = &claims.cnf else {
            if dpop_scheme {
                return Err(Refusal::plain(
                    ErrorCode::TokenInvalid,
                    "this access token is not bound to a key: send it as Authorization: Bearer",
                ));
            }
            if self.0.settings.dpop.mode == DpopMode::Required {
                return Err(Refusal::plain(
                    ErrorCode::DpopProofRequired,
                    "this gateway takes only DPoP-bound access tokens: get one with a DPoP proof \
                     (POST <agent api>/token or /topup with a DPoP header)",
                ));
            }
            return Ok((claims, None));
        };
        if !dpop_scheme {
            return Err(Refusal::plain(
                ErrorCode::DpopProofRequired,
                "this access token is bound to a key: send Authorization: DPoP <token> with a \
                 DPoP proof signed by that key",
            ));
        }
        let Some(proof) = self.read_proof(headers, line, Some(token))? else {
            return Err(Refusal::plain(
                ErrorCode::DpopProofRequired,
                "this access token is bound to a key: send a DPoP proof header with it",
            ));
        };
        if proof.jkt != cnf.jkt {
            return Err(invalid(ProofError::WrongKey));
        }
        self.spend_proof(&proof).await?;
        Ok((claims, Some(proof)))
    }

    /// The key a token request binds its new token to: the thumbprint of the request's
    /// proof (checked and spent), `None` without one. Refused without a proof when the
    /// gateway takes only bound tokens; with DPoP off the header is not read.
    pub(super) async fn binding_key(
        &self,
        headers: &HeaderMap,
        line: RequestLine<'_>,
        access_token: Option<&str>,
    ) -> Result<Option<String>, Refusal> {
        if self.0.settings.dpop.mode == DpopMode::Off {
            return Ok(None);
        }
        match self.read_proof(headers, line, access_token)? {
            Some(proof) => {
                self.spend_proof(&proof).await?;
                Ok(Some(proof.jkt))
            }
            None if self.0.settings.dpop.mode == DpopMode::Required => Err(Refusal::plain(
                ErrorCode::DpopProofRequired,
                "this gateway issues only DPoP-bound access tokens: send a DPoP proof header \
                 (RFC 9449) with this request",
            )),
            None => Ok(None),
        }
    }

    /// The request's proof, verified (not yet spent); `None` without a `DPoP` header.
    fn read_proof(
        &self,
        headers: &HeaderMap,
        line: RequestLine<'_>,
        access_token: Option<&str>,
    ) -> Result<Option<Proof>, Refusal> {
        let mut values = headers.get_all(DPOP_HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid(ProofError::Multiple));
        }
        if value.len() > proofs::MAX_PROOF_BYTES {
            return Err(invalid(ProofError::TooLarge));
        }
        let value = value.to_str().map_err(|_| invalid(ProofError::Malformed))?;
        let url = format!("{}{}", self.base_url(headers, line.uri), line.uri.path());
        let expected = Expected {
            method: line.method.as_str(),
            url: &url,
            any_scheme: self.0.settings.public_base_url.is_none(),
            access_token,
            now_secs: self.0.settings.clock.now_secs(),
        };
        proofs::verify(value.trim(), &expected, &self.0.settings.dpop)
            .map(Some)
            .map_err(invalid)
    }

    /// Spend a proof's `jti` (per key) in the store, until the proof is too old anyway.
    async fn spend_proof(&self, proof: &Proof) -> Result<(), Refusal> {
        let until = self.0.settings.dpop.remember_until_ms(proof.iat);
        let ttl = Duration::from_millis(
            u64::try_from(until.saturating_sub(self.0.settings.clock.now_ms())).unwrap_or(0),
        )
        .max(Duration::from_secs(1));
        match self
            .0
            .store
            .claim_once(&format!("dpop|{}|{}", proof.jkt, proof.jti), ttl)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::plain(
                ErrorCode::DpopProofReplayed,
                "this DPoP proof (its jti) was used already: make a fresh one for each request",
            )
            .standing(Standing::Dpop("proof_replayed"))),
            Err(e) => Err(Refusal::store_down(e, "dpop proof")),
        }
    }

    /// How DPoP is judged here.
    pub fn dpop_policy(&self) -> &crate::dpop::DpopPolicy {
        &self.0.settings.dpop
    }
}
