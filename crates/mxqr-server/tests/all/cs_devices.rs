//! `/_matrix/client/v3/devices`: listing, viewing, renaming, deleting, and device IDs with
//! `+`, `/` and `=` (matrix-sdk's base64 keys) round-tripping through paths.

use mxqr_testkit::Backend;
use mxqr_testkit::cs::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DEVICES: &str = "/_matrix/client/v3/devices";

/// A device ID with every base64 character that needs care in a path.
const KEY_ID: &str = "ab+cd/ef+GH/ij0123456789ABCDEFGHIJKLMNOPQ=";

async fn list_and_view(backend: Backend) {
    let server = start(backend).await;
    let phone = token(&server, "PHONE").await;
    token(&server, "LAPTOP").await;
    let (status, body) = get(&server, DEVICES, &phone).await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<&str> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["LAPTOP", "PHONE"]);

    let (status, body) = get(&server, &format!("{DEVICES}/LAPTOP"), &phone).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "device_id": "LAPTOP" }))
    );
    assert_error(
        &get(&server, &format!("{DEVICES}/NOPE"), &phone).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn other_users_devices_are_invisible(backend: Backend) {
    let server = start(backend).await;
    server.add_user("bob").await;
    let alice = token(&server, "PHONE").await;
    token_with_scope(&server, "bob", "BOBPHONE", &scope("BOBPHONE")).await;
    assert_error(
        &get(&server, &format!("{DEVICES}/BOBPHONE"), &alice).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn base64_device_ids_round_trip(backend: Backend) {
    let server = start(backend).await;
    let observer = token(&server, "PHONE").await;
    // Unknown before the token exists, in both encodings of `+`.
    for path in [
        format!("{DEVICES}/{}", segment(KEY_ID)),
        format!("{DEVICES}/{}", segment(KEY_ID).replace('+', "%2B")),
    ] {
        assert_error(
            &get(&server, &path, &observer).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
    let own = token(&server, KEY_ID).await;
    let (status, me) = get(&server, "/_matrix/client/v3/account/whoami", &own).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["device_id"], KEY_ID);
    for path in [
        format!("{DEVICES}/{}", segment(KEY_ID)),
        format!("{DEVICES}/{}", segment(KEY_ID).replace('+', "%2B")),
    ] {
        let (status, device) = get(&server, &path, &observer).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(device["device_id"], KEY_ID, "`+` must not become a space");
    }
    let path = format!("{DEVICES}/{}", segment(KEY_ID));
    let (status, _) = put(&server, &path, &own, &json!({ "display_name": "Phone+/" })).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = get(&server, DEVICES, &observer).await;
    let listed: Vec<&Value> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["device_id"] == KEY_ID)
        .collect();
    assert_eq!(
        listed,
        [&json!({ "device_id": KEY_ID, "display_name": "Phone+/" })]
    );
}

async fn rename(backend: Backend) {
    let server = start(backend).await;
    let phone = token(&server, "PHONE").await;
    let path = format!("{DEVICES}/PHONE");
    let (status, body) = put(
        &server,
        &path,
        &phone,
        &json!({ "display_name": "My phone" }),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert_eq!(
        get(&server, &path, &phone).await.1["display_name"],
        "My phone"
    );
    // No name: nothing changes.
    assert_eq!(
        put(&server, &path, &phone, &json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&server, &path, &phone).await.1["display_name"],
        "My phone"
    );

    assert_error(
        &put(
            &server,
            &format!("{DEVICES}/NOPE"),
            &phone,
            &json!({ "display_name": "x" }),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &put(&server, &path, &phone, &json!({ "display_name": 5 })).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    assert_error(
        &put(
            &server,
            &path,
            &phone,
            &json!({ "display_name": "x".repeat(101) }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let response = server
        .http
        .put(server.url(&path))
        .bearer_auth(&phone)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");
}

async fn a_device_deletes_itself_and_its_tokens_stop_working(backend: Backend) {
    let server = start(backend).await;
    let phone = token(&server, "PHONE").await;
    let laptop = token(&server, "LAPTOP").await;
    let (status, body) = call(
        &server,
        Method::DELETE,
        &format!("{DEVICES}/PHONE"),
        Some(&phone),
        None,
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert_error(
        &get(&server, "/_matrix/client/v3/account/whoami", &phone).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_error(
        &get(&server, &format!("{DEVICES}/PHONE"), &laptop).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn deleting_another_device_goes_through_the_account_page(backend: Backend) {
    let server = start(backend).await;
    let phone = token(&server, "PHONE").await;
    let laptop = token(&server, KEY_ID).await;
    let path = format!("{DEVICES}/{}", segment(KEY_ID));
    let (status, uia) = call(&server, Method::DELETE, &path, Some(&phone), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(uia["session"].is_string());
    assert_eq!(uia["flows"][0]["stages"], json!(["m.oauth"]));
    let url = uia["params"]["m.oauth"]["url"].as_str().unwrap();
    let parsed = url::Url::parse(url).unwrap();
    assert_eq!(parsed.path(), "/account");
    let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    assert!(query.contains(&("action".into(), "org.matrix.device_delete".into())));
    assert!(query.contains(&("device_id".into(), KEY_ID.into())));
    assert!(uia.get("errcode").is_none(), "no errcode before an attempt");
    // Nothing happened yet.
    assert_eq!(
        get(&server, "/_matrix/client/v3/account/whoami", &laptop)
            .await
            .0,
        StatusCode::OK
    );

    // Retrying without having approved: still 401, now with an errcode.
    let body = json!({ "auth": { "type": "m.oauth", "session": uia["session"] } });
    let (status, again) = call(&server, Method::DELETE, &path, Some(&phone), Some(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(again["errcode"], "M_FORBIDDEN");

    // The account page deletes it (as its form does), then the retry succeeds.
    assert!(
        server
            .db()
            .delete_device("alice", KEY_ID, server.oauth.now_ms())
            .await
            .unwrap()
    );
    let (status, done) = call(&server, Method::DELETE, &path, Some(&phone), Some(&body)).await;
    assert_eq!((status, done), (StatusCode::OK, json!({})));
    assert_error(
        &get(&server, "/_matrix/client/v3/account/whoami", &laptop).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    // Without an attempt, an unknown device is a 404.
    assert_error(
        &call(
            &server,
            Method::DELETE,
            &format!("{DEVICES}/NOPE"),
            Some(&phone),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

mxqr_testkit::backend_tests! {
    list_and_view,
    other_users_devices_are_invisible,
    base64_device_ids_round_trip,
    rename,
    a_device_deletes_itself_and_its_tokens_stop_working,
    deleting_another_device_goes_through_the_account_page,
}
