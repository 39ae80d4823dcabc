"""msrun (`python -m mindllm._msrun ARGS` = `msrun ARGS`), except that the scheduler runs on node rank 0 only.

msrun starts a scheduler on every machine of which --master_addr is an address. Trying several nodes on one machine
(--master_addr 127.0.0.1) makes that every node: the second scheduler cannot listen and fails its node's job.
`python -m mindllm.launch` runs this module in msrun's place; on a real cluster it changes nothing (node 0 is the
machine at --master_addr).
"""
from mindspore.parallel.cluster import run
from mindspore.parallel.cluster.process_entity import _api


def main():
    args = run.get_args()
    if hasattr(_api, "_is_local_ip"):  # msrun's test "is the scheduler's address mine?", read when it starts
        _api._is_local_ip = lambda addr: args.node_rank <= 0
    run.run(args)


if __name__ == "__main__":
    main()
