//! The scripted person at a browser: a cookie-keeping HTTP client that does not follow
//! redirects (each hop is looked at), the login form, and the consent pages of the device
//! grant (`/link`) and of the authorization code (`/oauth2/authorize`).

use std::time::Duration;

use reqwest::{Client, Response};
use url::Url;

/// The user the person signs in as.
pub const USER: &str = "alice";
/// [`USER`]'s password on servers the command-line tests set up (`mxqr admin user add`).
pub const PASSWORD: &str = "correct horse battery staple";

/// Longest wait for one page: a hang fails here.
pub const PAGE_WAIT: Duration = Duration::from_secs(60);

/// A browser: keeps cookies, does not follow redirects.
pub fn browser() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PAGE_WAIT)
        .build()
        .unwrap()
}

/// A browser that, like the devices of the scale-out tests, opens a connection per request
/// (so that each page may come from another instance behind a proxy).
pub fn browser_without_pool() -> Client {
    Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The first form of the page that posts to `action`.
pub fn form_posting_to<'a>(html: &'a str, action: &str) -> &'a str {
    let start = html
        .find(&format!("action=\"{action}\""))
        .unwrap_or_else(|| panic!("no form for {action}:\n{html}"));
    let end = html[start..]
        .find("</form>")
        .map_or(html.len(), |e| e + start);
    &html[start..end]
}

/// Every `<input type="hidden">` of `html` as name/value pairs, entities decoded.
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + "<input type=\"hidden\" name=\"".len()..];
        let name_end = rest.find('"').unwrap();
        let name = rest[..name_end].to_owned();
        let v = rest.find("value=\"").unwrap() + "value=\"".len();
        let v_end = rest[v..].find('"').unwrap() + v;
        let value = rest[v..v_end]
            .replace("&#x2f;", "/")
            .replace("&#x27;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        fields.push((name, value));
    }
    fields
}

/// Opens `uri` in `browser`; when the server sends the person to its login page first, signs
/// in as [`USER`] with `password` and follows the way back. Returns the page, checked to be a
/// success.
pub async fn open_signed_in(browser: &Client, base: &Url, uri: &str, password: &str) -> Response {
    let mut page = browser.get(uri).send().await.unwrap();
    if page.status().is_redirection() {
        let next = page.headers()["location"].to_str().unwrap().to_owned();
        let login_page = browser
            .get(base.join(&next).unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut form = hidden_inputs(form_posting_to(&login_page, "/login"));
        form.push(("username".into(), USER.into()));
        form.push(("password".into(), password.into()));
        let done = browser
            .post(base.join("login").unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(done.status().is_redirection(), "login: {}", done.status());
        let back = done.headers()["location"].to_str().unwrap().to_owned();
        page = browser.get(base.join(&back).unwrap()).send().await.unwrap();
    }
    assert!(
        page.status().is_success(),
        "consent page: {}",
        page.status()
    );
    page
}

/// The person on the existing device, in `browser`: opens the device-grant consent link
/// (signing in first), ticks the confirmation box and answers `decision` (`approve` or
/// `deny`).
pub async fn decide_in(browser: &Client, base: &Url, uri: &str, decision: &str) {
    let html = open_signed_in(browser, base, uri, PASSWORD)
        .await
        .text()
        .await
        .unwrap();
    let mut form = hidden_inputs(form_posting_to(&html, "/link"));
    form.push(("decision".into(), decision.into()));
    form.push(("confirm".into(), "yes".into()));
    let done = browser
        .post(base.join("link").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success(), "{decision}: {}", done.status());
}

/// [`decide_in`] a fresh [`browser`].
pub async fn decide(base: &Url, uri: &str, decision: &str) {
    decide_in(&browser(), base, uri, decision).await
}

/// [`decide`] with `approve`.
pub async fn consent(base: &Url, uri: &str) {
    decide(base, uri, "approve").await
}

/// The person in a browser on this machine: opens the authorization URL, signs in, and
/// answers the consent page with `decision`; the browser then follows the redirect to the
/// loopback listener of `mxqr account login`. Returns that redirect.
pub async fn authorize_in_browser(base: &Url, url: &str, decision: &str) -> Url {
    let browser = browser();
    let page = open_signed_in(&browser, base, url, PASSWORD).await;
    let html = page.text().await.unwrap();
    assert!(html.contains("mxqr"), "the consent page names the client");
    let mut form = hidden_inputs(form_posting_to(&html, "/oauth2/authorize"));
    form.push(("decision".into(), decision.into()));
    let answer = browser
        .post(base.join("oauth2/authorize").unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_redirection(),
        "decision: {}",
        answer.status()
    );
    let callback = Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(callback.host_str(), Some("127.0.0.1"), "{callback}");
    let landed = browser.get(callback.clone()).send().await.unwrap();
    assert_eq!(landed.status(), 200, "the loopback listener answers");
    callback
}
