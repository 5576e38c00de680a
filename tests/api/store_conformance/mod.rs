//! The store conformance suite (SPIRE `sqltest/suite.go`): every behaviour the
//! broker relies on, written once against the `Store` trait and run against each
//! backend. A backend joins with one line, `conformance!(name, factory())`, where
//! the factory returns a fresh, empty [`Backend`] per test.
//!
//! The cases only use the trait: no SQL, no backend internals. A case that fails
//! on one backend is a contract violation of that backend (or of the contract's
//! wording), never something to special-case here.
use mayfly::store::{SqlStore, Store};
use std::time::Duration;

mod approvals;
mod audit;
mod audit_archive;
mod delegations;
pub(crate) mod fixtures;
mod freezes;
mod keys;
mod retention;
mod revocations;
mod tasks;
mod tokens;

/// A store under test, with whatever must outlive it (its database).
pub struct Backend<S: Store> {
    pub store: S,
    _keep: Box<dyn std::any::Any>,
}

impl<S: Store> Backend<S> {
    pub fn new(store: S, keep: impl std::any::Any) -> Self {
        Backend {
            store,
            _keep: Box::new(keep),
        }
    }
}

/// PostgreSQL: a fresh database per test, migrated by `SqlStore::postgres`.
async fn pg_store() -> Backend<SqlStore> {
    let db = crate::support::fresh_database().await;
    let store = SqlStore::postgres(&db.url, 8, Duration::from_secs(10))
        .await
        .expect("connect to the test database");
    Backend::new(store, db)
}

/// One `#[tokio::test]` per case, each on a store of its own.
macro_rules! tests_for {
    ($make:expr; $($group:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let backend = $make.await;
                super::$group::$case(&backend.store).await;
            }
        )*
    };
}

/// Every case of the suite, by aggregate. A case defined but not listed here is
/// dead code, which clippy refuses.
macro_rules! every_case {
    ($apply:ident, $make:expr) => {
        $apply!($make;
            tasks::a_task_reads_back_as_inserted_with_its_audit_event,
            tasks::list_tasks_filters_by_agent_and_state_newest_first,
            tasks::list_tasks_returns_the_newest_up_to_the_limit,
            tasks::count_active_tasks_counts_only_active_tasks,
            tasks::end_task_ends_the_task_and_revokes_every_token_in_one_event,
            tasks::end_task_of_an_ended_task_is_not_active_and_writes_nothing,
            tasks::end_task_to_a_state_that_is_not_final_is_refused_and_writes_nothing,
            tasks::end_task_of_an_unknown_task_is_not_found_and_writes_nothing,
            tasks::overdue_tasks_are_active_tasks_at_or_past_their_deadline_in_order,
            tasks::overdue_tasks_page_by_cursor_through_equal_deadlines,

            tokens::an_accepted_token_reads_back_and_counts_against_the_budget,
            tokens::a_token_for_a_task_that_is_not_active_is_refused,
            tokens::a_token_for_another_agents_task_is_refused,
            tokens::a_token_at_or_past_the_task_deadline_is_refused,
            tokens::a_token_beyond_the_budget_is_refused,
            tokens::a_freeze_of_the_agent_stops_its_tokens_until_lifted,
            tokens::a_freeze_of_the_workflow_stops_its_tokens,
            tokens::a_freeze_of_all_issuance_stops_every_token,
            tokens::token_status_follows_revocation_and_the_task_state,
            tokens::a_token_whose_ancestor_is_revoked_reads_as_revoked,
            tokens::list_tokens_filters_by_task_agent_and_activity,
            tokens::concurrent_tokens_never_exceed_the_budget,
            tokens::a_token_racing_the_end_of_its_task_is_refused_as_ended_or_revoked_with_it,

            revocations::revoking_a_token_revokes_it_and_every_token_delegated_from_it,
            revocations::revoking_an_agent_revokes_its_tokens_their_descendants_and_its_tasks,
            revocations::revoking_a_sub_agent_revokes_the_tokens_delegated_to_it,
            revocations::revoking_a_task_revokes_its_tokens_and_stops_it_once,
            revocations::revoking_a_workflow_revokes_its_tokens_and_stops_its_tasks,
            revocations::revoking_everything_revokes_every_token_and_stops_every_task,
            revocations::revoking_an_unknown_token_or_task_is_none_and_writes_nothing,
            revocations::revocation_sequence_numbers_are_gap_free_in_commit_order,
            revocations::an_event_reads_back_unchanged_from_its_predecessor_up_to_the_last_sequence,
            revocations::a_revocation_is_never_dated_before_the_previous_one,
            revocations::the_feed_announces_revocations_committed_after_it_started,
            revocations::the_feed_announces_approval_decisions,
            revocations::revoking_a_target_again_answers_its_event_and_adds_nothing,
            revocations::revoking_an_agent_again_revokes_what_it_got_since,
            revocations::identical_revocations_racing_make_one_event,
            revocations::quarantining_an_agent_revokes_all_of_it_and_freezes_it_with_one_event,
            revocations::a_quarantine_of_two_targets_is_refused_and_writes_nothing,

            retention::pruning_tokens_deletes_only_those_expired_before_the_cutoff,
            retention::pruned_tokens_take_their_offers_and_spent_approvals_children_first,
            retention::lapsed_offers_and_unused_approvals_go_once_past_the_cutoff,
            retention::an_ended_task_goes_only_once_nothing_of_it_is_kept,
            retention::revocation_history_is_pruned_up_to_the_newest_event_before_the_cutoff,
            retention::a_denial_stands_while_its_task_is_active,
            retention::pruning_an_empty_store_deletes_nothing,
            retention::a_revocation_is_kept_while_a_token_it_concerns_may_be_valid,
            retention::pruning_and_revoking_everything_at_once_both_succeed,
            retention::a_token_that_outlived_the_event_revoking_it_is_revoked_again,

            delegations::an_offer_reads_back_as_inserted_with_its_audit_event,
            delegations::offers_of_one_parent_stop_at_the_open_limit,
            delegations::lapsed_and_redeemed_offers_leave_room_under_the_open_limit,
            delegations::a_redemption_records_the_child_and_counts_against_the_budget,
            delegations::redeeming_an_unknown_offer_is_not_found,
            delegations::an_offer_is_redeemed_only_once,
            delegations::a_lapsed_offer_is_expired,
            delegations::an_offer_whose_parent_or_ancestor_was_revoked_is_refused,
            delegations::redeeming_in_a_task_that_is_not_active_is_refused,
            delegations::redeeming_past_the_task_deadline_is_refused,
            delegations::redeeming_beyond_the_budget_is_refused,
            delegations::redeeming_is_refused_while_a_freeze_covers_either_agent,
            delegations::two_concurrent_redemptions_of_one_offer_yield_one_token,
            delegations::revoking_the_sub_agent_lapses_the_offers_made_to_it,
            delegations::concurrent_offers_never_exceed_the_open_limit,
            delegations::a_redemption_racing_a_revocation_is_refused_or_revoked_with_it,

            approvals::an_approval_reads_back_as_pending_with_its_audit_event,
            approvals::a_request_meets_the_approval_standing_for_its_task_requester_and_scope,
            approvals::a_denied_approval_keeps_standing_after_its_deadline,
            approvals::a_lapsed_or_spent_approval_no_longer_stands,
            approvals::list_approvals_is_newest_first_and_pending_at_excludes_closed_ones,
            approvals::deciding_a_pending_approval_records_the_decision_and_its_audit_event,
            approvals::a_decided_or_lapsed_approval_is_not_pending_and_an_unknown_one_not_found,
            approvals::two_concurrent_deciders_yield_exactly_one_decision,
            approvals::two_concurrent_requests_open_one_approval,
            approvals::an_approved_approval_is_spent_on_one_token_only,
            approvals::two_concurrent_spends_of_one_approval_mint_one_token,
            approvals::a_pending_denied_or_lapsed_approval_cannot_be_spent,
            approvals::spending_is_refused_when_the_task_refuses_the_token,
            approvals::refused_step_ups_are_counted_only_while_pending_or_denied,

            freezes::a_freeze_stands_until_lifted_and_both_are_audited,
            freezes::freezing_a_frozen_target_keeps_the_standing_freeze,
            freezes::freeze_covering_finds_a_freeze_of_either_agent_the_workflow_or_all,

            keys::a_registered_key_is_live_until_its_not_after,
            keys::registering_a_key_again_extends_it_and_never_shortens_it,
            keys::a_different_public_key_never_replaces_a_registered_kid,
            keys::a_reachable_store_answers_ping,

            audit::an_empty_store_has_no_events_no_revocations_and_a_genesis_head,
            audit::sealing_chains_committed_events_in_order_and_the_chain_verifies,
            audit::events_are_in_the_chain_as_their_writes_commit,
            audit::audit_chain_reads_a_window_of_positions,
            audit::an_appended_event_reads_back_unchanged,
            audit::audit_for_task_lists_a_tasks_events_oldest_first,
            audit::query_audit_finds_an_agents_events_as_actor_or_subject,
            audit::query_audit_filters_by_task_action_and_time,
            audit::query_audit_pages_after_a_position,
            audit::token_access_counts_tokens_per_agent_and_resource,

            audit_archive::the_anchor_moves_only_forward_to_a_sealed_event_with_its_hash,
            audit_archive::only_events_at_or_below_the_anchor_are_removed_in_batches,
            audit_archive::an_anchor_at_the_head_leaves_only_the_archive_events,
            audit_archive::audit_dated_before_ends_where_the_first_event_at_or_after_the_time_is,
        );
    };
}

/// Runs every case against the backend `$make` builds.
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            every_case!(tests_for, $make);
        }
    };
}

conformance!(postgres, pg_store());

/// SQLite: a fresh database file per test, in a directory removed after it.
async fn sqlite_store() -> Backend<mayfly::store::SqlStore> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}/mayfly.db", dir.path().display());
    let store = mayfly::store::SqlStore::sqlite_url(&url, 8, Duration::from_secs(10))
        .await
        .expect("open the SQLite store");
    Backend::new(store, dir)
}

conformance!(sqlite, sqlite_store());
