"""Bad input, verb by verb, as users type it: every case exits 2 with one line that names the
file:line or the config key (with the closest valid key where there is one), prints no
traceback, and leaves the outputs already in the run directory byte for byte as they were
(half the cases pass --force over a complete stage).

The table is built from three lists: bad data files x every verb that reads records or seeds,
bad keys and values per verb, and bad paths (models, adapters, outputs)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from bioinstruct.cli import main

pytestmark = pytest.mark.unit

GOOD = [{"instruction": "Name two loop diuretics.", "input": "", "output": "furosemide, bumetanide", "category": "qa"},
        {"instruction": "List the drugs in this note.", "input": "On aspirin.", "output": "aspirin", "category": "ie"},
        {"instruction": "Summarise the findings of this report.", "input": "CT: no bleed.", "output": "No bleed.",
         "category": "generation"}]
LINE1 = json.dumps(GOOD[0]) + "\n"

# name -> (file name, content, the error's fragment); {f} is the file's path. Line 2 is the bad one.
BAD_RECORDS = {
    "missing": ("missing.jsonl", None, "{f}: no such file"),
    "folder": ("folder.jsonl", "DIR", "{f}: a folder"),
    "empty": ("empty.jsonl", "", "{f}: no records"),
    "blank": ("blank.jsonl", "\n \n", "{f}: no records"),
    "empty-array": ("empty.json", "[]", "{f}: no records"),
    "not-utf8": ("latin1.jsonl", LINE1.encode() + '{"instruction": "Fièvre?", "output": "x"}\n'.encode("latin-1"),
                 "{f}:2: not UTF-8"),
    "bad-json": ("bad.jsonl", LINE1 + '{"instruction": "x", "output": }\n', "{f}:2: invalid JSON"),
    "pretty-object": ("pretty.jsonl", '{\n  "instruction": "x",\n  "output": "y"\n}\n', "{f}:1: invalid JSON"),
    "trailing-comma": ("comma.json", "[\n" + LINE1.strip() + ",\n]\n", "{f}:3: invalid JSON"),
    "array-of-strings": ("strings.json", '[\n"a"\n]', "{f}:2: expected a JSON object"),
    "null-row": ("null.jsonl", LINE1 + "null\n", "{f}:2: expected a JSON object"),
    "list-row": ("list.jsonl", LINE1 + "[1, 2]\n", "{f}:2: expected a JSON object"),
    "no-instruction": ("noinstr.jsonl", LINE1 + '{"input": "", "output": "x"}\n', "{f}:2: record has no 'instruction'"),
    "int-output": ("intout.jsonl", LINE1 + '{"instruction": "Dose?", "output": 5}\n', "{f}:2: 'output' must be a string"),
    "list-input": ("listin.jsonl", LINE1 + '{"instruction": "Dose?", "input": ["a"], "output": "x"}\n',
                   "{f}:2: 'input' must be a string"),
    "empty-instruction": ("emptyinstr.jsonl", LINE1 + '{"instruction": "  ", "output": "x"}\n',
                          "{f}:2: empty 'instruction'"),
    "array-bad-record": ("array.json", "[\n" + LINE1.strip() + ",\n" + '{"output": "x"}\n]',
                         "{f}:3: record has no 'instruction'"),
    "bom-bad-json": ("bom.jsonl", "\ufeff" + LINE1 + "{oops}\n", "{f}:2: invalid JSON"),
    "crlf-bad-json": ("crlf.jsonl", LINE1.replace("\n", "\r\n") + "{oops}\r\n", "{f}:2: invalid JSON"),
    "csv-extra-cell": ("extra.csv", "instruction,input,output\nName a statin.,,atorvastatin,x\n",
                       "{f}:2: 4 fields, the header has 3"),
    "csv-after-bad-byte": ("late.csv", b"instruction,input,output\n\"Fi\xe8vre\",,x\n", "{f}:2: not UTF-8"),
}
# Records every reader refuses whatever it requires; these need 'output' or 'category' too.
NEEDS_OUTPUT = {"no-output": ("noout.jsonl", LINE1 + '{"instruction": "Dose?", "input": ""}\n',
                              "{f}:2: record has no 'output'")}
BAD_CATEGORY = {"bad-category": ("badcat.jsonl", LINE1 + '{"instruction": "Dose?", "output": "x", "category": "QA"}\n',
                                 "{f}:2: category 'QA' is not one of")}

SEED1 = '{"id": "s0", "instruction": "Name a statin.", "instances": [{"input": "", "output": "atorvastatin"}]}\n'
BAD_SEEDS = {
    "missing": ("missing-seeds.jsonl", None, "{f}: seed file not found"),
    "not-utf8": ("seeds-latin1.jsonl", SEED1.encode() + '{"id": "s1", "instruction": "Fièvre?"}\n'.encode("latin-1"),
                 "{f}:2: not UTF-8"),
    "bad-json": ("seeds-bad.jsonl", SEED1 + '{"id": "s1",}\n', "{f}:2: invalid JSON"),
    "trailing-comma": ("seeds-comma.json", "[\n" + SEED1.strip() + ",\n]\n", "{f}:3: invalid JSON"),
    "null-row": ("seeds-null.jsonl", SEED1 + "null\n", "{f}:2: a seed task must be a JSON object"),
    "bom-crlf-bad-json": ("seeds-bom.jsonl", "\ufeff" + SEED1.replace("\n", "\r\n") + "{oops}\r\n",
                          "{f}:2: invalid JSON"),
    "folder": ("seeds-folder", "DIR", "{f}"),
    "no-seeds": ("noseeds.jsonl", "", "{f}: no seed tasks"),
    "alpaca-record": ("alpaca.jsonl", LINE1, "{f}:1: seed task has no 'id'"),
    "no-instances": ("noinst.jsonl", '{"id": "s1", "instruction": "Name a statin."}\n',
                     "{f}:1: seed task has no 'instances' (a seed is"),
    "instances-not-list": ("instdict.jsonl", '{"id": "s1", "instruction": "Name a statin.", "instances": {}}\n',
                           "{f}:1: 'instances' must be a non-empty list"),
    "empty-output": ("emptyout.json", '[\n{"id": "s1", "instruction": "Name a statin.", "instances": '
                     '[{"input": "", "output": "atorvastatin"}]},\n{"id": "s2", "instruction": "Name a loop diuretic.", '
                     '"instances": [{"input": "", "output": ""}]}\n]', "{f}:3: an instance of seed 's2' has an empty"),
    "duplicate-id": ("dup.jsonl", '{"id": "s1", "instruction": "Name a statin.", "instances": [{"input": "", "output": "a"}]}\n'
                     '{"id": "s1", "instruction": "Name a diuretic.", "instances": [{"input": "", "output": "b"}]}\n',
                     "{f}:2: duplicate id 's1'"),
    "one-object": ("seeds-object.json", '{\n  "id": "s1",\n  "instruction": "Name a statin.",\n  "instances": '
                   '[{"input": "", "output": "a"}]\n}\n', "{f}:1: expected a list of seed tasks"),
    "bad-seed-category": ("seedcat.jsonl", '{"id": "s1", "instruction": "Name a statin.", "category": "misc", '
                          '"instances": [{"input": "", "output": "a"}]}\n', "{f}:1: category 'misc' is not one of"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    """A workspace with good inputs and a run directory whose stages are complete."""
    ws = tmp_path_factory.mktemp("bad-input")
    good = ws / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    bad = ws / "bad"
    bad.mkdir()
    for name, content, _ in [*BAD_RECORDS.values(), *NEEDS_OUTPUT.values(), *BAD_CATEGORY.values(),
                             *BAD_SEEDS.values()]:
        path = bad / name
        if content == "DIR":
            path.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, encoding="utf-8", newline="")
    run = ws / "run"
    assert main(["filter", "--in", str(good), "--out", str(run / "filter" / "kept.jsonl")]) == 0
    assert main(["classify", f"run_dir={run}", "--in", str(good), "llm.backend=offline"]) == 0
    (ws / "a-file").write_text("not a folder\n")
    (ws / "empty-dir").mkdir()
    (ws / "adapter-no-config").mkdir()
    zero = ws / "zero-model"  # a model folder whose weights file is empty (a failed copy)
    zero.mkdir()
    for f in tiny_model_dir.glob("*.json"):
        (zero / f.name).write_bytes(f.read_bytes())
    (zero / "model.safetensors").write_bytes(b"")
    # a real adapter of a smaller LLaMA (hidden size 32), to be put on the 64-wide tiny model
    small = ws / "small-model"
    assert main(["make-tiny-model", str(small), "pretrain_steps=1", "hidden_size=32", "intermediate_size=64"]) == 0
    assert main(["train", "--config", str(Path(__file__).resolve().parent.parent / "configs/train/tiny/lora.yaml"),
                 f"run_dir={ws / 'small-run'}", f"model.path={small}", f"data.path={good}",
                             "deepspeed=null", "optim.max_steps=1"]) == 0
    adapter = next((ws / "small-run").glob("train/*/adapter"))
    adapter.rename(ws / "small-adapter")
    return {"ws": ws, "good": good, "bad": bad, "run": run, "model": tiny_model_dir}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def record_readers(ws):
    """Each verb that reads instruction records, as a function of the file it is given."""
    run, good, model = ws["run"], ws["good"], ws["model"]
    return {
        "filter --in": lambda f: ["filter", "--in", f, "--out", str(run / "filter" / "kept.jsonl"), "--force"],
        "filter --pool": lambda f: ["filter", "--in", str(good), "--pool", f, "--out", str(run / "filter" / "kept.jsonl")],
        "decontaminate": lambda f: ["decontaminate", f"run_dir={run}", "--in", f, "tasks=[pubmedqa]"],
        "classify": lambda f: ["classify", f"run_dir={run}", "--in", f, "llm.backend=offline", "--force"],
        "subsets": lambda f: ["subsets", f"run_dir={run}", "--in", f],
        "stats": lambda f: ["stats", "--in", f, f"run_dir={run}"],
        "agreement --from": lambda f: ["agreement", "--sample", "2", "--from", f, "--sheet", str(run / "sheet.csv")],
        "train": lambda f: ["train", "--config", "configs/train/tiny/lora.yaml", f"run_dir={run}", f"model.path={model}",
                            f"data.path={f}", "deepspeed=null"],
    }


READERS = ["filter --in", "filter --pool", "decontaminate", "classify", "subsets", "stats", "agreement --from", "train"]


def data_cases():
    for reader in READERS:
        table = {**BAD_RECORDS, **({} if reader == "filter --pool" else NEEDS_OUTPUT)}
        if reader != "filter --pool":
            table.update(BAD_CATEGORY)
        for name, (file, _, fragment) in table.items():
            if reader == "subsets" and name in ("int-output", "list-input", "empty-instruction"):
                fragment = "{f}:2: record has no 'category'"  # its first complaint about that line
            yield pytest.param("records", reader, file, fragment, id=f"{reader}:{name}")
    for name, (file, _, fragment) in BAD_SEEDS.items():
        yield pytest.param("seeds", "generate", file, fragment, id=f"generate seeds:{name}")


# (verb's argv after the verb, the error's fragments); {run}, {model}, {good}, {ws} filled in.
TRAIN = ["train", "--config", "configs/train/tiny/lora.yaml", "run_dir={run}", "model.path={model}",
         "data.path={good}", "deepspeed=null"]
EVALUATE = ["evaluate", "--model", "{model}", "--tasks", "pubmedqa", "--out", "{run}/evaluate"]
KEY_CASES = {
    # train
    "train lora.r=-1": (TRAIN + ["lora.r=-1"], ["'lora.r=-1'", "key 'lora.r' must be >= 1"]),
    "train lora.r=0": (TRAIN + ["lora.r=0"], ["key 'lora.r' must be >= 1"]),
    "train lora.r=x": (TRAIN + ["lora.r=x"], ["key 'lora.r' expects int"]),
    "train lora.r=100000": (TRAIN + ["lora.r=100000"], ["key 'lora.r' must be within 1..64 for {model}",
                                                        "q_proj layers are 64x64"]),
    "train optim.lr=.nan": (TRAIN + ["optim.lr=.nan"], ["key 'optim.lr' expects a finite number, got nan"]),
    "train optim.lr=.inf": (TRAIN + ["optim.lr=.inf"], ["key 'optim.lr' expects a finite number, got inf"]),
    "train optim.max_grad_norm=.nan": (TRAIN + ["optim.max_grad_norm=.nan"], ["key 'optim.max_grad_norm' expects a finite"]),
    "train seed=-1": (TRAIN + ["seed=-1"], ["key 'seed' must be within 0..4294967295, got -1"]),
    "train seed=2**32": (TRAIN + ["seed=4294967296"], ["key 'seed' must be within 0..4294967295"]),
    "train peak_tflops=0": (TRAIN + ["peak_tflops=0"], ["key 'peak_tflops' must be > 0"]),
    "train model.path zero-byte weights": (TRAIN + ["model.path={ws}/zero-model"],
                                           ["model.path: {ws}/zero-model/model.safetensors is not a readable safetensors",
                                            "0 bytes"]),
    "train lora.rank": (TRAIN + ["lora.rank=8"], ["unknown key 'lora.rank'", "'lora.r'"]),
    "train lora.alpha=0": (TRAIN + ["lora.alpha=0"], ["key 'lora.alpha' must be >= 1"]),
    "train lora.dropout=1": (TRAIN + ["lora.dropout=1"], ["key 'lora.dropout' must be within [0, 1)"]),
    "train lora.dropout=-0.1": (TRAIN + ["lora.dropout=-0.1"], ["key 'lora.dropout' must be within [0, 1)"]),
    "train lora.target_modules=[]": (TRAIN + ["lora.target_modules=[]"], ["key 'lora.target_modules' is empty"]),
    "train lora.target_modules=q": (TRAIN + ["lora.target_modules=q_proj"], ["key 'lora.target_modules' expects"]),
    "train lora.target_modules typo": (TRAIN + ["lora.target_modules=[q_proj,v_prj]"],
                                       ["lora.target_modules: 'v_prj' is no layer of", "(closest: 'v_proj')"]),
    "train lora.target_modules none": (TRAIN + ["lora.target_modules=[query,value]"],
                                       ["lora.target_modules: 'query' is no layer of"]),
    "train optim.lr=0": (TRAIN + ["optim.lr=0"], ["key 'optim.lr' must be > 0"]),
    "train optim.lr=-1e-4": (TRAIN + ["optim.lr=-1e-4"], ["key 'optim.lr' must be > 0"]),
    "train optim.lr=fast": (TRAIN + ["optim.lr=fast"], ["key 'optim.lr' expects float"]),
    "train optim.learning_rate": (TRAIN + ["optim.learning_rate=1e-4"], ["unknown key 'optim.learning_rate'"]),
    "train optim.epochs=0": (TRAIN + ["optim.epochs=0"], ["key 'optim.epochs' must be > 0"]),
    "train optim.max_steps=0": (TRAIN + ["optim.max_steps=0"], ["key 'optim.max_steps' must be > 0, or -1"]),
    "train optim.max_steps=-2": (TRAIN + ["optim.max_steps=-2"], ["key 'optim.max_steps' must be > 0, or -1"]),
    "train optim.micro_batch=0": (TRAIN + ["optim.micro_batch=0"], ["key 'optim.micro_batch' must be >= 1"]),
    "train optim.effective_batch=0": (TRAIN + ["optim.effective_batch=0"], ["key 'optim.effective_batch' must be >= 1"]),
    "train optim.effective_batch=10": (TRAIN + ["optim.effective_batch=10", "optim.micro_batch=4"],
                                       ["optim.effective_batch=10 is not divisible by optim.micro_batch (4)"]),
    "train optim.warmup_steps=-1": (TRAIN + ["optim.warmup_steps=-1"], ["key 'optim.warmup_steps' must be >= 0"]),
    "train optim.weight_decay=-1": (TRAIN + ["optim.weight_decay=-1"], ["key 'optim.weight_decay' must be >= 0"]),
    "train optim.scheduler": (TRAIN + ["optim.scheduler=cosin"], ["key 'optim.scheduler' must be one of"]),
    "train checkpoint.every_steps=0": (TRAIN + ["checkpoint.every_steps=0"], ["key 'checkpoint.every_steps' must be >= 1"]),
    "train checkpoint.keep_last=0": (TRAIN + ["checkpoint.keep_last=0"], ["key 'checkpoint.keep_last' must be >= 1"]),
    "train checkpoint.resume": (TRAIN + ["checkpoint.resume=yes"], ["key 'checkpoint.resume' must be one of"]),
    "train data.max_length=0": (TRAIN + ["data.max_length=0"], ["key 'data.max_length' must be >= 1"]),
    "train data.max_length=8": (TRAIN + ["data.max_length=8"], ["data.max_length=8 is smaller than the prompt"]),
    "train data.subset": (TRAIN[:-2] + ["data.subset=qa", "deepspeed=null"], ["data.subset: no subset 'qa'"]),
    "train data.packing=maybe": (TRAIN + ["data.packing=maybe"], ["key 'data.packing' expects bool"]),
    "train logging_steps=0": (TRAIN + ["logging_steps=0"], ["key 'logging_steps' must be >= 1"]),
    "train seed=x": (TRAIN + ["seed=x"], ["key 'seed' expects int"]),
    "train model.dtype": (TRAIN + ["model.dtype=fp8"], ["key 'model.dtype' must be one of"]),
    "train model.attn": (TRAIN + ["model.attn_implementation=flash"], ["key 'model.attn_implementation' must be one of"]),
    "train deepspeed missing": (TRAIN[:-1] + ["deepspeed=nowhere.json"], ["deepspeed: nowhere.json not found"]),
    "train model.path missing": (TRAIN + ["model.path=/nowhere/llama"], ["model.path: no such directory: /nowhere/llama"]),
    "train model.path file": (TRAIN + ["model.path={ws}/a-file"], ["model.path: ", "a-file is a file"]),
    "train model.path empty": (TRAIN + ["model.path={ws}/empty-dir"], ["model.path: ", "has no config.json"]),
    "train run_dir file": (TRAIN + ["run_dir={ws}/a-file"], ["run_dir: ", "a-file"]),
    "train config missing": (["train", "--config", "nowhere.yaml"], ["nowhere.yaml"]),
    "train unknown section": (TRAIN + ["optimizer.lr=1"], ["unknown key 'optimizer'", "'optim'"]),
    # evaluate
    "evaluate batch_size=0": (EVALUATE + ["batch_size=0"], ["key 'batch_size' must be >= 1"]),
    "evaluate batch_size=-1": (EVALUATE + ["batch_size=-1"], ["key 'batch_size' must be >= 1"]),
    "evaluate batch_size=x": (EVALUATE + ["batch_size=x"], ["key 'batch_size' expects int"]),
    "evaluate limit=0": (EVALUATE + ["limit=0"], ["key 'limit' must be >= 1"]),
    "evaluate limit=-5": (EVALUATE + ["limit=-5"], ["key 'limit' must be >= 1"]),
    "evaluate max_new_tokens=0": (EVALUATE + ["max_new_tokens=0"], ["key 'max_new_tokens' must be >= 1"]),
    "evaluate tasks=[]": (EVALUATE + ["tasks=[]"], ["key 'tasks' is empty"]),
    "evaluate --tasks misspelt": (EVALUATE[:4] + ["pubmedq"], ["unknown task 'pubmedq'", "'pubmedqa'"]),
    "evaluate task_data misspelt": (EVALUATE + ["task_data.medmcq.path=x"],
                                    ["key 'task_data.medmcq' names an unknown task", "'medmcqa'"]),
    "evaluate task_data option": (EVALUATE + ["task_data.pubmedqa.pth=x"], ["pth"]),
    "evaluate shard 0/3": (EVALUATE + ["--shard", "0/3"], ["0/3"]),
    "evaluate shard 4/3": (EVALUATE + ["--shard", "4/3"], ["4/3"]),
    "evaluate shard x": (EVALUATE + ["--shard", "x"], ["shard"]),
    "evaluate dtype": (EVALUATE + ["dtype=fp8"], ["key 'dtype' must be one of"]),
    "evaluate batchsize": (EVALUATE + ["batchsize=4"], ["unknown key 'batchsize'", "'batch_size'"]),
    "evaluate judge concurrency": (EVALUATE + ["judge_llm.concurrency=0"], ["judge_llm"]),
    "evaluate no model": (["evaluate", "--tasks", "pubmedqa"], ["no model"]),
    "evaluate model missing": (EVALUATE[:1] + ["--model", "/nowhere/llama"] + EVALUATE[3:], ["--model: no such directory"]),
    "evaluate model file": (EVALUATE[:1] + ["--model", "{ws}/a-file"] + EVALUATE[3:], ["--model: ", "is a file"]),
    "evaluate model empty": (EVALUATE[:1] + ["--model", "{ws}/empty-dir"] + EVALUATE[3:], ["has no config.json"]),
    "evaluate adapter missing": (EVALUATE + ["--adapter", "/nowhere/adapter"], ["--adapter: no such directory"]),
    "evaluate adapter no config": (EVALUATE + ["--adapter", "{ws}/adapter-no-config"], ["has no adapter_config.json"]),
    "evaluate adapter of another size": (EVALUATE + ["--adapter", "{ws}/small-adapter", "allow_base_mismatch=true"],
                                         ["--adapter: {ws}/small-adapter/adapter_model.safetensors does not fit {model}",
                                          "q_proj is 64x64 (in x out) there", "lora_A is 8x32"]),
    "evaluate model zero-byte weights": (EVALUATE[:1] + ["--model", "{ws}/zero-model"] + EVALUATE[3:],
                                         ["--model: {ws}/zero-model/model.safetensors", "expected the model's weights"]),
    "evaluate judge temperature": (EVALUATE + ["judge_llm.temperature=-1"],
                                   ["key 'judge_llm.temperature' must be within [0, 2], got -1"]),
    "evaluate out file": (EVALUATE[:-1] + ["{ws}/a-file"], ["--out: ", "a-file is a file"]),
    "evaluate out under file": (EVALUATE[:-1] + ["{ws}/a-file/evaluate"], ["--out: ", "which is a file"]),
    "evaluate data option": (EVALUATE + ["task_data.pubmedqa.path={ws}/nowhere.json"],
                             ["unknown data option 'path'", "data.test_path"]),
    "evaluate missing data": (EVALUATE + ["task_data.pubmedqa.root={ws}/nowhere"],
                              ["nowhere/pubmedqa/", "not found (task pubmedqa", "To obtain it"]),
    # filter
    "filter threshold=1.5": (["filter", "--in", "{good}", "--out", "{run}/filter/kept.jsonl", "threshold=1.5"],
                             ["key 'threshold' must be within [0, 1], got 1.5"]),
    "filter --threshold x": (["filter", "--in", "{good}", "--out", "{run}/filter/kept.jsonl", "--threshold", "x"],
                             ["argument --threshold: invalid float value: 'x'"]),
    "filter threshold=x": (["filter", "--in", "{good}", "--out", "{run}/filter/kept.jsonl", "threshold=x"],
                           ["key 'threshold' expects float"]),
    "filter threshhold": (["filter", "--in", "{good}", "threshhold=0.5"], ["unknown key 'threshhold'", "'threshold'"]),
    "filter mode": (["filter", "--in", "{good}", "mode=bm25"], ["key 'mode' must be one of"]),
    "filter words": (["filter", "--in", "{good}", "rules.min_instruction_words=200"], ["min_instruction_words"]),
    "filter no input": (["filter", "--out", "{run}/filter/kept.jsonl"], ["no input"]),
    "filter out file": (["filter", "--in", "{good}", "--out", "{ws}/a-file/kept.jsonl"], ["a-file"]),
    "filter embedding_model missing": (["filter", "--in", "{good}", "run_dir={run}", "mode=embedding",
                                         "embedding_model={ws}/nowhere"],
                                       ["embedding_model: no such directory: {ws}/nowhere"]),
    "filter blacklist": (["filter", "--in", "{good}", "rules.blacklist=everything"], ["blacklist"]),
    # generate
    "generate target=0": (["generate", "run_dir={run}", "target=0", "llm.backend=offline"], ["key 'target' must be >= 1"]),
    "generate num_demos": (["generate", "run_dir={run}", "num_demos=30", "llm.backend=offline"], ["num_demos"]),
    "generate backend": (["generate", "run_dir={run}", "llm.backend=gpt4"], ["key 'llm.backend' must be one of"]),
    "generate concurrency": (["generate", "run_dir={run}", "llm.concurrency=0", "llm.backend=offline"], ["concurrency"]),
    "generate rpm": (["generate", "run_dir={run}", "llm.requests_per_minute=0", "llm.backend=offline"],
                     ["requests_per_minute"]),
    "generate no key": (["generate", "run_dir={run}", "llm.backend=openai", "llm.api_key_env=BIOINSTRUCT_NO_SUCH_KEY"],
                        ["BIOINSTRUCT_NO_SUCH_KEY"]),
    "generate run_dir file": (["generate", "run_dir={ws}/a-file", "llm.backend=offline"], ["a-file"]),
    "generate seed=-1": (["generate", "run_dir={run}", "seed=-1", "llm.backend=offline"],
                         ["key 'seed' must be within 0..4294967295"]),
    "generate top_p": (["generate", "run_dir={run}", "llm.top_p=1.5", "llm.backend=offline"],
                       ["key 'llm.top_p' must be within [0, 1], got 1.5"]),
    "generate temperature nan": (["generate", "run_dir={run}", "llm.temperature=.nan", "llm.backend=offline"],
                                 ["key 'llm.temperature' expects a finite number"]),
    "generate stall_after": (["generate", "run_dir={run}", "stall_after=0", "llm.backend=offline"],
                             ["key 'stall_after' must be >= 1"]),
    "generate max_cost": (["generate", "run_dir={run}", "llm.budget.max_cost=-5", "llm.backend=offline"],
                          ["key 'llm.budget.max_cost' must be >= 0"]),
    "generate backoff": (["generate", "run_dir={run}", "llm.backoff_max=-1", "llm.backend=offline"],
                         ["key 'llm.backoff_max' must be >= 0"]),
    "generate temprature": (["generate", "run_dir={run}", "llm.temprature=1"], ["unknown key 'llm.temprature'",
                                                                                "'llm.temperature'"]),
    # decontaminate
    "decontaminate ngram=0": (["decontaminate", "run_dir={run}", "--in", "{good}", "ngram=0"], ["ngram"]),
    "decontaminate containment": (["decontaminate", "run_dir={run}", "--in", "{good}", "containment=2"],
                                  ["key 'containment' must be within (0, 1]"]),
    "decontaminate policy": (["decontaminate", "run_dir={run}", "--in", "{good}", "--policy", "remove"],
                             ["argument --policy: invalid choice: 'remove'"]),
    "decontaminate task": (["decontaminate", "run_dir={run}", "--in", "{good}", "tasks=[medmcq]"],
                           ["medmcq", "medmcqa"]),
    "decontaminate missing data": (["decontaminate", "run_dir={run}", "--in", "{good}", "tasks=[pubmedqa]",
                                    "missing_data=error", "task_data.pubmedqa.root={ws}/nowhere"], ["nowhere"]),
    "decontaminate common_ngram_items=0": (["decontaminate", "run_dir={run}", "--in", "{good}", "common_ngram_items=0"],
                                           ["common_ngram_items"]),
    "decontaminate long_run=0": (["decontaminate", "run_dir={run}", "--in", "{good}", "long_run=0"], ["long_run"]),
    "decontaminate shingel": (["decontaminate", "run_dir={run}", "--in", "{good}", "shingel=3"],
                              ["unknown key 'shingel'", "'shingle'"]),
    # classify, subsets, stats, agreement, report, make-tiny-model, status, launch
    "classify attempts": (["classify", "run_dir={run}", "--in", "{good}", "parse_attempts=0", "llm.backend=offline"],
                          ["parse_attempts"]),
    "classify no input": (["classify", "run_dir={ws}/empty-dir", "llm.backend=offline"],
                          ["empty-dir/filter/kept.jsonl: no such file"]),
    "subsets seed=-1": (["subsets", "run_dir={run}", "--in", "{good}", "seed=-1"], ["key 'seed' must be within 0.."]),
    "stats seed": (["stats", "--in", "{good}", "run_dir={run}", "seed=99999999999999999999999"],
                   ["key 'seed' must be within 0..4294967295"]),
    "agreement --seed -1": (["agreement", "--sample", "2", "--from", "{good}", "--sheet", "{run}/s.csv", "--seed", "-1"],
                            ["key 'seed' must be within 0.."]),
    "agreement sheet not utf8": (["agreement", "--labels", "{ws}/bad/late.csv", "{ws}/bad/late.csv"],
                                 ["{ws}/bad/late.csv:2: not UTF-8"]),
    "filter top_k": (["filter", "--in", "{good}", "top_k=-1"], ["key 'top_k' must be >= 0"]),
    "filter embedding_threshold": (["filter", "--in", "{good}", "embedding_threshold=.nan"],
                                   ["key 'embedding_threshold' expects a finite number"]),
    "subsets sizes": (["subsets", "run_dir={run}", "--in", "{good}", "sizes=[0]"], ["sizes must be positive"]),
    "subsets formats": (["subsets", "run_dir={run}", "--in", "{good}", "formats=[alpaca]"], ["formats must include jsonl"]),
    "subsets format name": (["subsets", "run_dir={run}", "--in", "{good}", "formats=[jsonl,parquet]"], ["formats"]),
    "subsets sizes too big": (["subsets", "run_dir={run}", "--in", "{good}", "sizes=[2,50]"],
                              ["sizes: 50 not below the 3 records"]),
    "stats bad key": (["stats", "--in", "{good}", "run_dir={run}", "top_k=3"], ["unknown key 'top_k'"]),
    "agreement sample=0": (["agreement", "--sample", "0", "--from", "{good}", "--sheet", "{run}/s.csv"], ["sample"]),
    "agreement labels missing": (["agreement", "--labels", "{ws}/nowhere.jsonl", "{ws}/nowhere2.csv"], ["nowhere"]),
    "report no run": (["report", "{ws}/nowhere-run"], ["no such directory"]),
    "report no results": (["report", "{ws}/empty-dir"], ["{ws}/empty-dir: no results.json", "nothing to report"]),
    "report out file": (["report", "{run}", "--out", "{ws}/a-file"], ["a-file"]),
    "tiny model file": (["make-tiny-model", "{ws}/a-file"], ["a-file"]),
    "tiny model under file": (["make-tiny-model", "{ws}/a-file/model"], ["a-file"]),
    "tiny model key": (["make-tiny-model", "{ws}/m", "pretrain_step=5"], ["unknown key 'pretrain_step'",
                                                                         "'pretrain_steps'"]),
    "tiny model pretrain_steps=-1": (["make-tiny-model", "{ws}/m", "pretrain_steps=-1"],
                                     ["key 'pretrain_steps' must be >= 0, got -1"]),
    "tiny model hidden_size=0": (["make-tiny-model", "{ws}/m", "hidden_size=0"], ["key 'hidden_size' must be >= 1"]),
    "tiny model heads=0": (["make-tiny-model", "{ws}/m", "num_attention_heads=0"],
                           ["key 'num_attention_heads' must be >= 1"]),
    "tiny model seed huge": (["make-tiny-model", "{ws}/m", "seed=99999999999999999999999"],
                             ["key 'seed' must be within 0..4294967295"]),
    "tiny model seed=-1": (["make-tiny-model", "{ws}/m", "seed=-1"], ["key 'seed' must be within 0..4294967295"]),
    "tiny model lr nan": (["make-tiny-model", "{ws}/m", "lr=.nan"], ["key 'lr' expects a finite number"]),
    "tiny model lr=0": (["make-tiny-model", "{ws}/m", "lr=0"], ["key 'lr' must be > 0"]),
    "tiny model vocab": (["make-tiny-model", "{ws}/m", "vocab_size=10"], ["key 'vocab_size' must be >= 300"]),
    "tiny model corpus missing": (["make-tiny-model", "{ws}/m", "corpus={ws}/nowhere.txt"], ["nowhere.txt"]),
    "tiny model corpus not utf8": (["make-tiny-model", "{ws}/m", "corpus={ws}/bad/latin1.jsonl"], ["latin1.jsonl"]),
    "status no run": (["status", "{ws}/nowhere-run"], ["nowhere-run"]),
    "launch no sweep": (["launch", "{ws}/nowhere.yaml"], ["nowhere.yaml"]),
    "launch bad key": (["launch", "launch/quickstart-local.yaml", "--dry-run", "run_dir={run}", "stagess=[x]"],
                       ["unknown key 'stagess'"]),
}


@pytest.fixture
def isolated(monkeypatch):
    """A verb may set torch.distributed's variables and signal handlers: keep them to the case."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    yield
    for s, h in handlers.items():
        signal.signal(s, h)


def check(argv, fragments, ws, capsys):
    before = snapshot(ws["ws"])
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (an option's value): usage, then one error line
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    verb = argv[0]
    assert code == 2, f"exit {code}: {err[-2000:]}"
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"bioinstruct {verb}: error: "), err
    message = lines[-1]
    # One error line: above it only argparse's usage or a skipped stage's "already complete".
    assert not [line for line in lines[:-1] if "error" in line], err
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    after = snapshot(ws["ws"])
    changed = [p for p, data in before.items() if after.get(p) != data]
    assert not changed, f"existing output changed: {changed}"


@pytest.mark.parametrize("kind, reader, file, fragment", list(data_cases()))
def test_bad_data_file(ws, kind, reader, file, fragment, capsys, isolated):
    path = str(ws["bad"] / file)
    if kind == "seeds":
        argv = ["generate", f"run_dir={ws['run']}", f"seed_tasks={path}", "llm.backend=offline"]
    else:
        argv = record_readers(ws)[reader](path)
    check(argv, [fragment.format(f=path)], ws, capsys)


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_bad_key_value_or_path(ws, case, capsys, isolated):
    argv, fragments = KEY_CASES[case]
    fill = {"run": ws["run"], "model": ws["model"], "good": ws["good"], "ws": ws["ws"]}
    check([a.format(**fill) for a in argv], [f.format(**fill) for f in fragments], ws, capsys)


def test_the_table_is_large(ws):
    assert len(list(data_cases())) + len(KEY_CASES) >= 200


def numeric_keys(cls, prefix=""):
    """(dotted key, type) of every int and float field of a config, sections included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from numeric_keys(tp, prefix + f.name + ".")
        elif {int, float} & ({tp} | set(typing.get_args(tp))):
            yield prefix + f.name, tp


def all_configs():
    from bioinstruct.launch.sweep import StageDefaults
    from bioinstruct.stages.pipeline import STAGES

    return {**{name: stage.config for name, stage in STAGES.items()}, "launch resources": StageDefaults}


def test_every_numeric_key_has_a_range():
    """Whatever the stage, a number outside every sensible range (negative beyond any limit,
    NaN, infinite) is refused by the config loader with the key named, before any work, and
    a seed is within 0..2**32-1."""
    from bioinstruct.errors import ConfigError
    from bioinstruct.runs.config import load_config

    checked = 0
    for name, cls in all_configs().items():
        for key, tp in numeric_keys(cls):
            floats = float in ({tp} | set(__import__("typing").get_args(tp)))
            for bad in ["-1000000000000000000000000000000"] + ([".nan", ".inf"] if floats else []):
                with pytest.raises(ConfigError, match=f"key '{key}'"):
                    load_config(cls, None, [f"{key}={bad}"])
            if key.rsplit(".", 1)[-1] == "seed":
                load_config(cls, None, [f"{key}={2 ** 32 - 1}"])
                with pytest.raises(ConfigError, match=f"key '{key}' must be within 0..4294967295"):
                    load_config(cls, None, [f"{key}={2 ** 32}"])
            checked += 1
    assert checked >= 100


def test_report_force_never_replaces_a_report_with_an_empty_one(ws, tmp_path, capsys, isolated):
    demo = Path(__file__).resolve().parent.parent / "bioinstruct" / "data" / "demo_tasks"
    run = tmp_path / "run"
    assert main(["evaluate", "--model", str(ws["model"]), "--tasks", "pubmedqa", "--out", str(run / "evaluate"),
                 "limit=3", f"task_data.pubmedqa.root={demo}"]) == 0
    assert main(["report", str(run)]) == 0
    before = snapshot(run / "report")
    assert "report.json" in {Path(p).name for p in before}
    for results in run.rglob("results.json"):  # the results are moved away (another disk, a cleanup)
        results.rename(results.with_name("results.moved"))
    capsys.readouterr()
    assert main(["report", str(run), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{run}: no results.json" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert snapshot(run / "report") == before
