//! One bounded HTTP GET for the documents the engine polls (an issuer's JWKS, a mandate
//! revocation list): the body is read chunk by chunk and refused past its bound, so a hostile
//! or broken server cannot make the gateway buffer more than that.

/// Why a fetch failed.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// Connect, send or read failed.
    Transport(String),
    /// The server answered a non-2xx status.
    Status(reqwest::StatusCode),
    /// The body is larger than the bound.
    TooLarge,
}

/// The client for them: 5 s per request, no redirects (a document moved elsewhere is an
/// error to see, not a place to follow).
pub(crate) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

/// `GET url`: the body of a 2xx answer, at most `max` bytes.
pub(crate) async fn get_bounded(
    client: &reqwest::Client,
    url: &str,
    max: usize,
) -> Result<Vec<u8>, FetchError> {
    let transport = |e: reqwest::Error| FetchError::Transport(e.to_string());
    let mut res = client.get(url).send().await.map_err(transport)?;
    if !res.status().is_success() {
        return Err(FetchError::Status(res.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > max {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
