"""Session 22: the packed selection path. Agreement with the exact path, tiles redone, and selection
alone old vs new (register caps, tiles) as CUDA graphs of 20 launches."""
import importlib, statistics, sys
import torch
sys.path.insert(0, ".kdev/pk")
dev = torch.device("cuda")
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
old = importlib.import_module("blossom_old.attention.ltis_triton")
new = importlib.import_module("blossom.attention.ltis_triton")


def graph_us(run, reps=20, rounds=7):
    run(); torch.cuda.synchronize()
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(reps):
            run()
    ts = []
    for _ in range(rounds):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); gr.replay(); e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / reps * 1000)
    return statistics.median(ts)


for length in [200, 512, 1024, 2048, 4096, 8192]:
    torch.manual_seed(length)
    q = torch.randn(64, length, 8, 16, device=dev, dtype=torch.bfloat16).transpose(1, 2)
    ck = torch.randn(64, 2, length // 16, 16, device=dev, dtype=torch.bfloat16)
    want = new._selection(q, ck, 0.25, 4, packed=False)
    redone = torch.zeros(triton_cdiv := (length + 63) // 64 * 128, dtype=torch.int32, device=dev)
    got = new._selection(q, ck, 0.25, 4, packed=True, redone=redone)
    o = old.select_blocks(q, ck, 0.25)
    t_old = graph_us(lambda: old.select_blocks(q, ck, 0.25))
    t_new = graph_us(lambda: new.select_blocks(q, ck, 0.25))
    t_packed = graph_us(lambda: new._selection(q, ck, 0.25, 4, packed=True))
    t_exact = graph_us(lambda: new._selection(q, ck, 0.25, 4, packed=False))
    print(f"L={length:5d} packed identical to exact: {torch.equal(got, want)} (old: {torch.equal(o, want)}), redone "
          f"{redone.sum().item()}/{redone.numel()} tiles | select us: old {t_old:.1f}, select_blocks {t_new:.1f} "
          f"({t_new / t_old:.3f}x), packed path {t_packed:.1f} ({t_packed / t_old:.3f}x), exact path {t_exact:.1f} "
          f"({t_exact / t_old:.3f}x)", flush=True)
