//! The build's shadow-sync policy, resolved from exactly one `policy-<name>` cargo feature.
//!
//! Everything in the framework is generic over `P: SyncPolicy`; the worker binary instantiates it
//! with [`BuildPolicy`]. There is no run-time choice: a different policy is a different build.

#[cfg(not(any(
    feature = "policy-acquire-load",
    feature = "policy-rmb-fence",
    feature = "policy-always-lock",
    feature = "policy-seqcst-fence",
    feature = "policy-no-barrier",
)))]
compile_error!(
    "shadowlab-framework: no shadow-sync policy selected. Enable exactly one of the features \
     policy-acquire-load, policy-rmb-fence (the default), policy-always-lock, \
     policy-seqcst-fence, policy-no-barrier"
);

/// Stops the build when two policy features are on, naming them.
macro_rules! exclusive_policies {
    ($($a:literal & $b:literal),* $(,)?) => {$(
        #[cfg(all(feature = $a, feature = $b))]
        compile_error!(concat!(
            "shadowlab-framework: two shadow-sync policies selected: features `", $a, "` and `", $b,
            "`. Enable exactly one (use --no-default-features --features <policy> to replace the \
             default policy-rmb-fence)"
        ));
    )*};
}

exclusive_policies!(
    "policy-acquire-load" & "policy-rmb-fence",
    "policy-acquire-load" & "policy-always-lock",
    "policy-acquire-load" & "policy-seqcst-fence",
    "policy-acquire-load" & "policy-no-barrier",
    "policy-rmb-fence" & "policy-always-lock",
    "policy-rmb-fence" & "policy-seqcst-fence",
    "policy-rmb-fence" & "policy-no-barrier",
    "policy-always-lock" & "policy-seqcst-fence",
    "policy-always-lock" & "policy-no-barrier",
    "policy-seqcst-fence" & "policy-no-barrier",
);

/// The policy this build was compiled with.
#[cfg(all(
    feature = "policy-acquire-load",
    not(any(
        feature = "policy-rmb-fence",
        feature = "policy-always-lock",
        feature = "policy-seqcst-fence",
        feature = "policy-no-barrier"
    ))
))]
pub type BuildPolicy = shadowlab_policies::AcquireLoad;
/// The policy this build was compiled with.
#[cfg(all(
    feature = "policy-rmb-fence",
    not(any(
        feature = "policy-acquire-load",
        feature = "policy-always-lock",
        feature = "policy-seqcst-fence",
        feature = "policy-no-barrier"
    ))
))]
pub type BuildPolicy = shadowlab_policies::RmbFence;
/// The policy this build was compiled with.
#[cfg(all(
    feature = "policy-always-lock",
    not(any(
        feature = "policy-acquire-load",
        feature = "policy-rmb-fence",
        feature = "policy-seqcst-fence",
        feature = "policy-no-barrier"
    ))
))]
pub type BuildPolicy = shadowlab_policies::AlwaysLock;
/// The policy this build was compiled with.
#[cfg(all(
    feature = "policy-seqcst-fence",
    not(any(
        feature = "policy-acquire-load",
        feature = "policy-rmb-fence",
        feature = "policy-always-lock",
        feature = "policy-no-barrier"
    ))
))]
pub type BuildPolicy = shadowlab_policies::SeqCstFence;
/// The policy this build was compiled with.
#[cfg(all(
    feature = "policy-no-barrier",
    not(any(
        feature = "policy-acquire-load",
        feature = "policy-rmb-fence",
        feature = "policy-always-lock",
        feature = "policy-seqcst-fence"
    ))
))]
pub type BuildPolicy = shadowlab_policies::NoBarrier;
/// Any other feature combination has already stopped the build with the `compile_error!` above;
/// this alias only keeps rustc from piling cascading errors on top of that one message.
#[cfg(not(any(
    all(
        feature = "policy-acquire-load",
        not(any(
            feature = "policy-rmb-fence",
            feature = "policy-always-lock",
            feature = "policy-seqcst-fence",
            feature = "policy-no-barrier"
        ))
    ),
    all(
        feature = "policy-rmb-fence",
        not(any(
            feature = "policy-acquire-load",
            feature = "policy-always-lock",
            feature = "policy-seqcst-fence",
            feature = "policy-no-barrier"
        ))
    ),
    all(
        feature = "policy-always-lock",
        not(any(
            feature = "policy-acquire-load",
            feature = "policy-rmb-fence",
            feature = "policy-seqcst-fence",
            feature = "policy-no-barrier"
        ))
    ),
    all(
        feature = "policy-seqcst-fence",
        not(any(
            feature = "policy-acquire-load",
            feature = "policy-rmb-fence",
            feature = "policy-always-lock",
            feature = "policy-no-barrier"
        ))
    ),
    all(
        feature = "policy-no-barrier",
        not(any(
            feature = "policy-acquire-load",
            feature = "policy-rmb-fence",
            feature = "policy-always-lock",
            feature = "policy-seqcst-fence"
        ))
    )
)))]
pub type BuildPolicy = shadowlab_policies::RmbFence;

/// Run-time description of [`BuildPolicy`], for `--version` and results.
pub const BUILD_POLICY: shadowlab_policies::PolicyInfo =
    shadowlab_policies::PolicyInfo::of::<BuildPolicy>();
