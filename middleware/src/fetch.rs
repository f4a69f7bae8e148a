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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on loopback that answers every connection with `head`, then
    /// `body_len` bytes of `x` (chunked when `body_len` is `None`: a body that never ends).
    async fn serve(head: &'static str, body_len: Option<usize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let chunk = vec![b'x'; 16 * 1024];
                    match body_len {
                        Some(n) => {
                            let h = format!("{head}\r\ncontent-length: {n}\r\n\r\n");
                            let _ = sock.write_all(h.as_bytes()).await;
                            let _ = sock.write_all(&vec![b'x'; n]).await;
                        }
                        None => {
                            let h = format!("{head}\r\ntransfer-encoding: chunked\r\n\r\n");
                            let _ = sock.write_all(h.as_bytes()).await;
                            loop {
                                let c = format!("{:x}\r\n", chunk.len());
                                if sock.write_all(c.as_bytes()).await.is_err()
                                    || sock.write_all(&chunk).await.is_err()
                                    || sock.write_all(b"\r\n").await.is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        format!("http://{addr}/doc")
    }

    #[tokio::test]
    async fn bodies_are_bounded_while_read_and_failures_are_told_apart() {
        let c = client().unwrap();
        let ok = serve("HTTP/1.1 200 OK", Some(1000)).await;
        assert_eq!(get_bounded(&c, &ok, 1000).await.unwrap().len(), 1000);
        assert!(matches!(
            get_bounded(&c, &ok, 999).await,
            Err(FetchError::TooLarge)
        ));
        // A body that never ends is cut at the bound, not buffered.
        let endless = serve("HTTP/1.1 200 OK", None).await;
        assert!(matches!(
            get_bounded(&c, &endless, 256 * 1024).await,
            Err(FetchError::TooLarge)
        ));
        let missing = serve("HTTP/1.1 404 Not Found", Some(3)).await;
        assert!(matches!(
            get_bounded(&c, &missing, 1000).await,
            Err(FetchError::Status(s)) if s.as_u16() == 404
        ));
        let redirect = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/",
            Some(0),
        )
        .await;
        assert!(matches!(
            get_bounded(&c, &redirect, 1000).await,
            Err(FetchError::Status(s)) if s.as_u16() == 302
        ));
        // Nothing listening.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        assert!(matches!(
            get_bounded(&c, &closed, 1000).await,
            Err(FetchError::Transport(_))
        ));
    }
}
