"""The crash-loop breaker's decisions, one incarnation at a time (a new CrashGuard
over the same state folder is a worker restarted after a crash)."""

import json

from actors.crash_guard import MAX_STRIKES, CrashGuard, PartitionState, StateStore

TOPIC = "dmguard.images"


def guard(tmp_path, margin: int = 10) -> CrashGuard:
    return CrashGuard(StateStore(tmp_path, "dmguard"), TOPIC, margin=margin)


def died_after(tmp_path, committed: int, polled: int, margin: int = 10) -> None:
    """An incarnation that started, committed up to `committed`, polled up to
    `polled`, then died (no clean stop)."""
    g = guard(tmp_path, margin)
    g.start(0, 0)
    g.committed(0, committed, polled=polled)


def restarted(tmp_path, committed: int, margin: int = 10) -> CrashGuard:
    """The next incarnation, started where the last commit left the partition."""
    g = guard(tmp_path, margin)
    g.start(0, committed)
    return g


def state(tmp_path, partition: int = 0) -> dict:
    return json.loads(StateStore(tmp_path, "dmguard").path(TOPIC, partition).read_bytes())


def test_a_first_start_runs_batched_and_says_so_on_disk(tmp_path):
    g = guard(tmp_path)
    g.start(0, 0)
    assert not g.isolating()
    assert state(tmp_path)["mode"] == "normal"


def test_after_a_clean_stop_the_next_start_suspects_nothing(tmp_path):
    g = guard(tmp_path)
    g.start(0, 0)
    g.committed(0, 50, polled=60)
    g.clean()
    g2 = guard(tmp_path)
    g2.start(0, 50)
    assert not g2.isolating()


def test_an_unclean_death_isolates_what_the_dead_worker_had_polled(tmp_path):
    died_after(tmp_path, committed=100, polled=120)
    g2 = restarted(tmp_path, 100)
    assert g2.isolating()
    assert state(tmp_path)["until"] == 130  # polled 120 + the margin for what came after
    g2.committed(0, 129, polled=130)
    assert g2.isolating()
    g2.committed(0, 130, polled=131)
    assert not g2.isolating()
    assert state(tmp_path)["mode"] == "normal"


def test_a_record_that_kills_the_worker_twice_alone_is_poison(tmp_path):
    died_after(tmp_path, committed=100, polled=105)
    # incarnation 2: isolating; offset 100 runs alone and kills it
    restarted(tmp_path, 100).before_dispatch(0, 100)
    assert state(tmp_path)["in_flight"] == 100
    # incarnation 3: first death alone: tried once more, not blamed yet
    g3 = restarted(tmp_path, 100)
    assert g3.poison_reason(0, 100) is None
    g3.before_dispatch(0, 100)
    assert state(tmp_path)["strikes"] == 1
    # incarnation 4: second death alone: dead-lettered, never processed
    g4 = restarted(tmp_path, 100)
    reason = g4.poison_reason(0, 100)
    assert reason and "crashed 2 times" in reason
    assert MAX_STRIKES == 2
    assert g4.poison_reason(0, 101) is None  # only that record
    g4.committed(0, 101, polled=101)  # its dead letter is out and committed
    assert g4.poison_reason(0, 100) is None
    assert state(tmp_path)["in_flight"] is None and state(tmp_path)["strikes"] == 0


def test_a_crash_before_the_poison_dead_letter_is_written_keeps_it_poisoned(tmp_path):
    died_after(tmp_path, committed=7, polled=8)
    for _ in range(2):
        restarted(tmp_path, 7).before_dispatch(0, 7)
    assert restarted(tmp_path, 7).poison_reason(0, 7)
    # that incarnation died before its dead letter was committed: still poison
    assert restarted(tmp_path, 7).poison_reason(0, 7)


def test_a_record_committed_before_the_death_is_not_blamed(tmp_path):
    died_after(tmp_path, committed=10, polled=12)
    restarted(tmp_path, 10).before_dispatch(0, 10)
    # its output was committed, then the process died before the state said so
    g3 = restarted(tmp_path, 11)
    assert g3.poison_reason(0, 10) is None and g3.poison_reason(0, 11) is None
    assert g3.isolating()


def test_one_death_alone_then_success_resets_the_strikes(tmp_path):
    died_after(tmp_path, committed=5, polled=6)
    restarted(tmp_path, 5).before_dispatch(0, 5)  # dies
    g3 = restarted(tmp_path, 5)
    g3.before_dispatch(0, 5)
    g3.committed(0, 6, polled=6)  # this time it went through
    g3.before_dispatch(0, 6)  # the next one dies
    assert restarted(tmp_path, 6).poison_reason(0, 6) is None  # a first strike, not a second


def test_partitions_are_judged_separately(tmp_path):
    g = guard(tmp_path)
    g.start(0, 0)
    g.start(1, 0)
    g.committed(0, 3, polled=4)
    g.clean()  # partition 0 and 1 both clean
    g2 = guard(tmp_path)  # an incarnation that reads partition 1 only
    g2.start(1, 0)
    g2.committed(1, 2, polled=9)  # dies with partition 1 in normal mode
    g3 = guard(tmp_path, margin=1)
    g3.start(0, 3)
    assert not g3.isolating()
    g3.start(1, 2)
    assert g3.isolating()


def test_unreadable_or_unwritable_state_never_stops_the_worker(tmp_path):
    store = StateStore(tmp_path, "dmguard")
    store.path(TOPIC, 0).write_bytes(b"\xff not json")
    g = CrashGuard(store, TOPIC, margin=5)
    g.start(0, 0)  # ignored, logged
    assert not g.isolating()
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    g2 = CrashGuard(StateStore(blocked / "sub", "dmguard"), TOPIC, margin=5)
    g2.start(0, 0)
    g2.committed(0, 1, polled=1)
    g2.clean()


def test_state_files_refuse_malformed_fields(tmp_path):
    for bad in (
        b"[]",
        b'{"mode": "other"}',
        b'{"mode": "normal", "committed": "7"}',
        b'{"mode": "isolating", "strikes": -1}',
        b'{"mode": "normal", "polled": true}',
    ):
        store = StateStore(tmp_path, "g")
        store.path(TOPIC, 0).parent.mkdir(parents=True, exist_ok=True)
        store.path(TOPIC, 0).write_bytes(bad)
        assert store.read(TOPIC, 0) is None, bad
    assert PartitionState.from_json(PartitionState("clean").to_json()) == PartitionState("clean")


def test_group_and_topic_names_cannot_escape_the_folder(tmp_path):
    store = StateStore(tmp_path / "state", "../../etc")
    path = store.path("../x", 3)
    assert path.parent == tmp_path / "state"
