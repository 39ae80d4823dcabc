"""mindllm.loadtest (python -m mindllm.bench --serve): a small load test end to end against a real server (times are
never asserted: the machines are noisy), the aggregates and the table from known records, and bad input is one line
with exit status 2."""
import subprocess
import sys

import pytest

from mindllm import loadtest


def record(client, index, prompt, ttft, latency, chunks, text="ab", rate=None):
    return {"client": client, "index": index, "prompt": prompt, "ttft_s": ttft, "latency_s": latency,
            "tokens_per_s": rate, "chunks": chunks, "text": text, "finish_reason": "length", "done": True,
            "completed": True, "error": None}


@pytest.mark.slow
def test_concurrent_clients_get_their_own_answers(tiny_cfg):
    """3 clients × 2 requests, each client a different prompt at a time: every answer completes and equals the one
    the same prompt gets alone (temperature 0), so requests decoded one after another share nothing."""
    from mindllm.train import train

    cfg = tiny_cfg("train.max_iters=3")
    train(cfg, log=lambda *a: None)
    # within the tiny model's 16-character context; 3 steps of training mostly repeat the last character, so the
    # prompts end differently (their answers must differ for cross-talk to show)
    prompts = ["ROMEO", "JULIET", "the king"]
    result = loadtest.run(cfg.out_dir, clients=3, requests=2, max_tokens=8, prompts=prompts, rounds=2,
                          log=lambda *a: None)
    reference = result["reference"]
    assert result["reference_completed"] and result["distinct_answers"] == 3  # cross-talk would show
    assert result["all_completed_and_equal"] and result["model"] == "run"
    for key, clients in (("baseline", 1), ("concurrent", 3)):
        summary = result[key]
        assert summary["clients"] == clients and len(summary["rounds"]) == 2
        assert summary["requests"] == summary["completed"] == 2 * clients * 2 and summary["mismatched"] == 0
        for out in summary["rounds"]:
            records = out["records"]
            assert len(records) == out["requests"] == out["completed"] == clients * 2
            assert sorted((r["client"], r["index"]) for r in records) == [(c, i) for c in range(clients)
                                                                           for i in range(2)]
            assert out["chunks"] == sum(r["chunks"] for r in records)
            assert out["aggregate_tokens_per_s"] == pytest.approx(out["chunks"] / out["wall_s"])
            for r in records:
                assert r["completed"] and r["done"] and r["error"] is None and r["finish_reason"] == "length"
                assert r["text"] == reference[r["prompt"]] and 1 <= r["chunks"] <= 8
                assert 0 < r["ttft_s"] <= r["latency_s"] <= out["wall_s"]
            for m in loadtest.METRICS:
                assert out[f"{m}_p95"] >= out[f"{m}_p50"] > 0
    first = [r for r in result["concurrent"]["rounds"][0]["records"] if r["index"] == 0]
    assert sorted(r["prompt"] for r in first) == [0, 1, 2]  # the clients asked different prompts at once
    for r in result["baseline"]["rounds"][0]["records"]:  # the lone client's own answers, not only the reference
        assert r["text"] == reference[r["prompt"]]
    table = loadtest.markdown(result)
    assert "| 1 | 4/4 |" in table and "| 3 | 12/12 |" in table and "equal to a lone client's: yes" in table


def test_aggregates_and_table_from_known_records():
    records = [record(0, 0, 0, 0.1, 1.0, 10, rate=10.0), record(0, 1, 1, 0.3, 2.0, 30, rate=20.0),
               record(1, 0, 1, 0.2, 3.0, 0, text="")]
    out = loadtest.aggregate(records, wall=4.0)
    assert out["requests"] == out["completed"] == 3 and out["chunks"] == 40
    assert out["requests_per_s"] == 0.75 and out["aggregate_tokens_per_s"] == 10.0
    assert out["ttft_p50"] == 0.2 and out["ttft_p95"] == pytest.approx(0.29)  # numpy's linear interpolation
    assert out["latency_p50"] == 2.0 and out["tokens_per_s_p50"] == 15.0  # a request without a rate is left out
    assert loadtest.percentile([None], 50) is None
    rounds = [{**out, "clients": 2, "mismatched": 0}, {**out, "clients": 2, "mismatched": 1, "wall_s": 6.0}]
    summary = loadtest.medians(rounds)
    assert summary["requests"] == 6 and summary["mismatched"] == 1 and summary["wall_s"] == 5.0
    result = {"machine": {"cpu": "cpu", "cores": 2, "python": "3", "mindspore": "2"}, "run": "r", "model": "m",
              "max_tokens": 8, "requests_per_client": 2, "rounds": 2, "server_peak_rss_mb": 500.0, "clients": 2,
              "prompts": ["a", "b"], "distinct_answers": 2,
              "all_completed_and_equal": False, "baseline": {**summary, "clients": 1}, "concurrent": summary}
    table = loadtest.markdown(result)
    assert "| 2 | 6/6 | 0.75 req/s | 200 ms | 290 ms | 2,000 ms |" in table
    assert "peak RSS 500 MB" in table and "NO (see serve.json) (2 distinct answers to 2 prompts)" in table


@pytest.mark.parametrize("args,message", [(["--serve", "/no/such/run"], "no run directory '/no/such/run'"),
                                          (["--clients", "0"], "--clients must be >= 1; got 0"),
                                          (["--max-tokens", "0"], "--max-tokens must be in 1..512")])
def test_bad_input_is_one_line(tmp_path, args, message):
    args = args if "--serve" in args else ["--serve", str(tmp_path), *args]
    out = subprocess.run([sys.executable, "-m", "mindllm.bench", *args, "--out", str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith(f"error: {message}") and len(out.stderr.strip().splitlines()) == 1


def test_a_directory_that_is_not_a_run_is_the_servers_one_line(tmp_path):
    with pytest.raises(loadtest.UserError, match="mindllm.serve exited with status 2: .* has no checkpoint yet"):
        loadtest.run(str(tmp_path), clients=1, requests=1, max_tokens=1, timeout=120)
