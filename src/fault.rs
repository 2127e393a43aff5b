//! Fault injection for tests of the daemon's own failure handling,
//! compiled into debug builds only: `UMBRA_INJECT_PANIC=SITE` in the
//! daemon's environment makes the code at that site panic (sites:
//! `nbd.write`, an NBD write on its worker thread). Release builds have no
//! sites: [`panic_point`] is empty there.

/// Panic here when the environment names `site`.
#[cfg(debug_assertions)]
pub fn panic_point(site: &str) {
    static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let want = WANT.get_or_init(|| std::env::var("UMBRA_INJECT_PANIC").ok());
    if want.as_deref() == Some(site) {
        panic!("injected panic at {site} (UMBRA_INJECT_PANIC)");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn panic_point(_site: &str) {}
