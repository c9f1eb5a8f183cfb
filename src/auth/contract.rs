//! The contract every `AuthStore` adapter passes. Each adapter's tests call `run_all`.
//! Every check uses fresh ids and emails, so the store may be shared and non-empty.

use super::store::{AuthError, AuthStore, Role, User};
use crate::domain::UserId;
use chrono::{DateTime, TimeZone, Utc};

/// A whole-second timestamp, so adapters that store microseconds compare equal.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn user(email: &str) -> User {
    User {
        id: UserId::random(),
        email: email.to_owned(),
        name: Some("Ada".into()),
        role: Role::Customer,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: at(0),
    }
}

fn fresh_email() -> String {
    format!("user-{}@example.com", UserId::random())
}

/// Runs every contract check against the store.
pub async fn run_all(store: &dyn AuthStore) {
    inserted_users_are_found_by_email_and_id(store).await;
    a_second_user_with_the_same_email_is_rejected(store).await;
    update_user_changes_role_name_and_hash(store).await;
    sessions_are_inserted_read_and_deleted(store).await;
    unknown_sessions_are_absent(store).await;
    store.ping().await.unwrap();
    assert!(!store.kind().is_empty());
}

async fn inserted_users_are_found_by_email_and_id(store: &dyn AuthStore) {
    let u = user(&fresh_email());
    store.insert_user(&u).await.unwrap();
    assert_eq!(
        store.user_by_email(&u.email).await.unwrap(),
        Some(u.clone())
    );
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(u));
    assert_eq!(store.user_by_email(&fresh_email()).await.unwrap(), None);
    assert_eq!(store.user_by_id(UserId::random()).await.unwrap(), None);
}

async fn a_second_user_with_the_same_email_is_rejected(store: &dyn AuthStore) {
    let first = user(&fresh_email());
    store.insert_user(&first).await.unwrap();
    let second = User {
        role: Role::Admin,
        ..user(&first.email)
    };
    assert_eq!(store.insert_user(&second).await, Err(AuthError::EmailTaken));
    // Nothing of the rejected user landed.
    assert_eq!(store.user_by_id(second.id).await.unwrap(), None);
    assert_eq!(
        store.user_by_email(&first.email).await.unwrap(),
        Some(first)
    );
}

async fn update_user_changes_role_name_and_hash(store: &dyn AuthStore) {
    let u = user(&fresh_email());
    store.insert_user(&u).await.unwrap();
    let other = user(&fresh_email());
    store.insert_user(&other).await.unwrap();
    let (mine, theirs) = (
        format!("digest-{}", UserId::random()),
        format!("digest-{}", UserId::random()),
    );
    store.insert_session(&mine, u.id, at(3600)).await.unwrap();
    store
        .insert_session(&theirs, other.id, at(3600))
        .await
        .unwrap();
    let changed = User {
        role: Role::Organizer,
        name: None,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXI$bmV3".into(),
        ..u.clone()
    };
    store.update_user(&changed).await.unwrap();
    assert_eq!(store.user_by_id(u.id).await.unwrap(), Some(changed.clone()));
    assert_eq!(store.user_by_email(&u.email).await.unwrap(), Some(changed));
    assert_eq!(
        store.session(&mine).await.unwrap(),
        None,
        "their sessions end"
    );
    assert!(
        store.session(&theirs).await.unwrap().is_some(),
        "no one else's"
    );
}

async fn sessions_are_inserted_read_and_deleted(store: &dyn AuthStore) {
    let u = user(&fresh_email());
    store.insert_user(&u).await.unwrap();
    let (key, other) = (
        format!("digest-{}", UserId::random()),
        format!("digest-{}", UserId::random()),
    );
    store.insert_session(&key, u.id, at(3600)).await.unwrap();
    store.insert_session(&other, u.id, at(7200)).await.unwrap();
    assert_eq!(store.session(&key).await.unwrap(), Some((u.id, at(3600))));
    store.delete_session(&key).await.unwrap();
    assert_eq!(store.session(&key).await.unwrap(), None);
    // Deleting is idempotent and touches only the named session.
    store.delete_session(&key).await.unwrap();
    assert_eq!(store.session(&other).await.unwrap(), Some((u.id, at(7200))));
}

async fn unknown_sessions_are_absent(store: &dyn AuthStore) {
    let key = format!("digest-{}", UserId::random());
    assert_eq!(store.session(&key).await.unwrap(), None);
    store.delete_session(&key).await.unwrap();
}
