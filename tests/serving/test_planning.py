"""What a deployment's replicas should become: start, stop, forget; rolling changes keep serving throughout."""

from __future__ import annotations

from serving.choices import DeploymentStatus, DesiredState, NodeState, ReplicaState
from serving.planning import ReplicaView, plan

READY, STARTING, PENDING, FAILED = (
    ReplicaState.READY,
    ReplicaState.STARTING,
    ReplicaState.PENDING,
    ReplicaState.FAILED,
)


def replica(
    id: int,
    state: str = READY,
    *,
    generation: int = 1,
    node: str | None = NodeState.READY,
    desired: str = DesiredState.RUNNING,
) -> ReplicaView:
    return ReplicaView(id=id, generation=generation, state=state, desired=desired, node_state=node)


# --- Starting and scaling --------------------------------------------------------------------------
def test_missing_replicas_are_started():
    decided = plan(3, 1, [replica(1)])
    assert decided.start == 2 and decided.stop == [] and decided.forget == []
    assert decided.status == DeploymentStatus.PENDING


def test_a_deployment_with_every_replica_ready_is_running():
    decided = plan(2, 1, [replica(1), replica(2)])
    assert decided.start == 0 and decided.stop == []
    assert decided.status == DeploymentStatus.RUNNING


def test_scaling_down_stops_replicas_that_are_not_ready_first():
    decided = plan(1, 1, [replica(1, STARTING), replica(2, READY), replica(3, PENDING)])
    assert sorted(decided.stop) == [1, 3]
    assert decided.start == 0


def test_scaling_down_stops_the_newest_ready_replicas_first():
    decided = plan(1, 1, [replica(1), replica(2), replica(3)])
    assert decided.stop == [3, 2]


def test_replicas_already_told_to_stop_are_not_counted_or_stopped_again():
    decided = plan(1, 1, [replica(1), replica(2, ReplicaState.STOPPING, desired=DesiredState.STOPPED)])
    assert decided.start == 0 and decided.stop == [] and decided.forget == []


def test_stopped_replicas_are_forgotten():
    decided = plan(1, 1, [replica(1), replica(2, ReplicaState.STOPPED, desired=DesiredState.STOPPED)])
    assert decided.forget == [2] and decided.start == 0


def test_desired_zero_stops_every_replica_and_is_pending_until_they_are_gone():
    decided = plan(0, 1, [replica(1), replica(2, STARTING)])
    assert sorted(decided.stop) == [1, 2] and decided.start == 0
    assert decided.status == DeploymentStatus.PENDING


def test_desired_zero_with_nothing_live_is_stopped():
    assert plan(0, 1, []).status == DeploymentStatus.STOPPED
    stopping = replica(1, ReplicaState.STOPPING, desired=DesiredState.STOPPED)
    assert plan(0, 1, [stopping]).status == DeploymentStatus.STOPPED


# --- Rolling restarts ------------------------------------------------------------------------------
def test_a_restart_starts_new_replicas_and_keeps_the_old_ones_serving():
    decided = plan(1, 2, [replica(1, generation=1)])
    assert decided.start == 1
    assert decided.stop == []


def test_old_replicas_keep_serving_while_new_ones_are_not_ready():
    decided = plan(
        2,
        2,
        [
            replica(1, generation=1),
            replica(2, generation=1),
            replica(3, STARTING, generation=2),
            replica(4, PENDING, generation=2),
        ],
    )
    assert decided.start == 0 and decided.stop == []
    assert decided.status == DeploymentStatus.PENDING


def test_each_ready_new_replica_lets_one_old_one_stop():
    decided = plan(
        2,
        2,
        [
            replica(1, generation=1),
            replica(2, generation=1),
            replica(3, READY, generation=2),
            replica(4, STARTING, generation=2),
        ],
    )
    assert len(decided.stop) == 1 and decided.stop[0] in {1, 2}
    assert decided.start == 0


def test_a_rollout_never_drops_below_the_desired_count_of_ready_replicas():
    replicas = [
        replica(1, generation=1),
        replica(2, generation=1),
        replica(3, READY, generation=2),
        replica(4, STARTING, generation=2),
    ]
    decided = plan(2, 2, replicas)
    still_ready = [r for r in replicas if r.state == READY and r.id not in decided.stop]
    assert len(still_ready) >= 2


def test_an_old_replica_that_is_not_ready_is_stopped_before_a_ready_one():
    decided = plan(
        2,
        2,
        [
            replica(1, READY, generation=1),
            replica(2, FAILED, generation=1),
            replica(3, READY, generation=2),
            replica(4, STARTING, generation=2),
        ],
    )
    assert decided.stop == [2]


def test_once_every_new_replica_is_ready_the_old_ones_stop_and_the_deployment_runs():
    decided = plan(
        2,
        2,
        [
            replica(1, generation=1),
            replica(2, generation=1),
            replica(3, READY, generation=2),
            replica(4, READY, generation=2),
        ],
    )
    assert sorted(decided.stop) == [1, 2] and decided.start == 0
    assert decided.status == DeploymentStatus.RUNNING


# --- Node trouble ----------------------------------------------------------------------------------
def test_a_replica_on_a_draining_node_is_replaced_first_and_kept_until_the_replacement_is_ready():
    draining = replica(1, node=NodeState.DRAINING)
    first = plan(1, 1, [draining])
    assert first.start == 1 and first.stop == [] and first.forget == []
    meanwhile = plan(1, 1, [draining, replica(2, STARTING)])
    assert meanwhile.start == 0 and meanwhile.stop == []
    after = plan(1, 1, [draining, replica(2, READY)])
    assert after.stop == [1] and after.start == 0
    assert after.status == DeploymentStatus.RUNNING


def test_a_replica_on_a_lost_node_is_forgotten_and_replaced():
    decided = plan(2, 1, [replica(1, node=NodeState.LOST), replica(2)])
    assert decided.forget == [1]
    assert decided.start == 1 and decided.stop == []


def test_a_replica_whose_node_is_gone_is_forgotten_and_replaced():
    decided = plan(1, 1, [replica(1, node=None)])
    assert decided.forget == [1] and decided.start == 1


def test_a_replica_stopping_on_a_lost_node_is_forgotten_as_no_agent_will_say_it_stopped():
    decided = plan(
        1, 1, [replica(1, ReplicaState.STOPPING, node=NodeState.LOST, desired=DesiredState.STOPPED)]
    )
    assert decided.forget == [1] and decided.start == 1


def test_a_deployment_scaled_to_zero_whose_node_died_while_it_stopped_is_stopped():
    stopping = ReplicaState.STOPPING
    decided = plan(
        0,
        1,
        [
            replica(1, stopping, node=NodeState.LOST, desired=DesiredState.STOPPED),
            replica(2, stopping, node=None, desired=DesiredState.STOPPED),
        ],
    )
    assert decided.forget == [1, 2] and decided.status == DeploymentStatus.STOPPED


def test_a_replica_stopping_on_a_draining_node_is_kept_until_it_stops():
    decided = plan(
        1, 1, [replica(1, ReplicaState.STOPPING, node=NodeState.DRAINING, desired=DesiredState.STOPPED)]
    )
    assert decided.forget == [] and decided.start == 1


# --- Failures --------------------------------------------------------------------------------------
def test_a_failed_current_replica_makes_the_deployment_degraded_and_is_not_replaced():
    decided = plan(2, 1, [replica(1), replica(2, FAILED)])
    assert decided.status == DeploymentStatus.DEGRADED
    assert decided.start == 0 and decided.stop == [] and decided.forget == []


def test_a_failed_replica_of_an_old_generation_does_not_degrade_the_rollout():
    decided = plan(1, 2, [replica(1, FAILED, generation=1), replica(2, READY, generation=2)])
    assert decided.status == DeploymentStatus.RUNNING
    assert decided.stop == [1]


def test_a_rolling_restart_surges_by_one_replica_at_a_time():
    old = [replica(i, generation=1) for i in range(1, 5)]
    first = plan(4, 2, old)
    assert (first.start, first.stop) == (1, [])
    second = plan(4, 2, [*old, replica(5, READY, generation=2)])
    assert len(second.stop) == 1 and second.start == 1, "one old stops per ready new, one more new starts"


# --- Replacing in place (no surge) ----------------------------------------------------------------
STOPPING = ReplicaState.STOPPING


def test_a_rolling_change_that_surges_says_its_new_replica_needs_extra_room():
    decided = plan(2, 2, [replica(1), replica(2)])
    assert decided.start == 1 and decided.stop == [] and decided.surging


def test_filling_a_missing_replica_is_not_a_surge():
    assert not plan(2, 1, [replica(1)]).surging


def test_in_place_one_old_replica_stops_first_and_nothing_starts_while_it_holds_its_room():
    decided = plan(2, 2, [replica(1), replica(2)], surge=False)
    assert decided.stop == [2] and decided.start == 0 and not decided.surging


def test_in_place_the_successor_starts_once_the_old_replica_has_stopped():
    still_stopping = [replica(1), replica(2, STOPPING, desired=DesiredState.STOPPED)]
    assert plan(2, 2, still_stopping, surge=False).start == 0
    stopped = [replica(1), replica(2, ReplicaState.STOPPED, desired=DesiredState.STOPPED)]
    decided = plan(2, 2, stopped, surge=False)
    assert decided.start == 1 and decided.stop == [] and decided.forget == [2]


def test_in_place_the_next_old_replica_stops_only_once_the_new_one_is_ready():
    starting = [replica(1), replica(3, STARTING, generation=2)]
    decided = plan(2, 2, starting, surge=False)
    assert decided.stop == [] and decided.start == 0
    ready = [replica(1), replica(3, generation=2)]
    decided = plan(2, 2, ready, surge=False)
    assert decided.stop == [1] and decided.start == 0


def test_in_place_never_runs_more_replicas_than_desired_and_keeps_all_but_one_serving():
    replicas = [replica(1), replica(2), replica(3)]
    next_id = 4
    for _ in range(30):
        decided = plan(3, 2, replicas, surge=False)
        live = [r for r in replicas if r.desired == DesiredState.RUNNING and r.state != ReplicaState.STOPPED]
        assert len(live) <= 3
        assert sum(r.state == READY for r in live) >= 2
        # The agent acts: stopped ones stop, forgotten ones go, started ones become ready, in one round.
        replicas = [
            ReplicaView(r.id, r.generation, ReplicaState.STOPPED, DesiredState.STOPPED)
            if r.id in decided.stop or r.desired == DesiredState.STOPPED
            else ReplicaView(r.id, r.generation, READY)
            for r in replicas
            if r.id not in decided.forget
        ]
        for _ in range(decided.start):
            replicas.append(ReplicaView(next_id, 2, STARTING))
            next_id += 1
    assert sorted((r.generation, r.state) for r in replicas) == [(2, READY)] * 3
