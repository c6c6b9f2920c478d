"""FDU-MTL: multi-domain sentiment classification, 16 binary tasks (one per domain).

Liu, Qiu & Huang, "Adversarial Multi-task Learning for Text Classification", ACL 2017,
Section 5.1: 14 Amazon product-review domains (Blitzer et al., 2007), IMDB movie reviews and
the MR movie-review sentences (Pang & Lee, 2005); each domain is a binary task (positive /
negative). Per domain the release has ``{domain}.task.train`` (about 1,600 labelled reviews,
of which the last 200 are the development set), ``{domain}.task.test`` (400) and an unlabelled
file that is not used here. Each line is ``label<TAB>text``, the text lower-cased and split
into space-separated tokens.

One frame holds every domain: ``text``, ``domain``, ``split`` (``train``, ``val`` = the last 200
lines of each train file, ``test``) and one label column per domain, named after the domain,
that holds 0/1 on that domain's rows and is empty on every other row. A multi-task model
therefore trains each task's head on its own domain only (empty labels are masked), and a
split by the ``split`` column reproduces the paper's train/dev/test sets.

Encodings: ``MR.*`` are Windows-1252 (decoded as such: byte 0x85 is an ellipsis), the others
UTF-8; ``dvd.task.train`` holds one truncated UTF-8 sequence, read as U+FFFD. Lines are split
on "\n" only: IMDB reviews contain NEL (U+0085), which ``str.splitlines`` would treat as a
line break.

Origin: the Fudan NLP group's release accompanying the paper (licence unstated); the URLs
below are a public mirror of its files. The SHA-256 sums are those of the copy in the shared
data folder, so :func:`polytask.data.datasets.fetch_dataset` refuses any other version.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from polytask.errors import DataError

FOLDER = "fdu-mtl"
URL_BASE = "https://raw.githubusercontent.com/m1ci/of-demo/main/data/mtl-dataset/"

#: The 16 domains (task names), in the order of Table 2 of the paper.
DOMAINS: tuple[str, ...] = (
    "books",
    "electronics",
    "dvd",
    "kitchen_housewares",
    "apparel",
    "camera_photo",
    "health_personal_care",
    "music",
    "toys_games",
    "video",
    "baby",
    "magazines",
    "software",
    "sports_outdoors",
    "imdb",
    "MR",
)
VAL_PER_DOMAIN = 200

#: SHA-256 of each domain's train and test files.
SHA256: dict[str, tuple[str, str]] = {
    "apparel": (
        "589702d71eded8ca23907acf6e434f203c8c6feb09737106f77f03707641ffc3",
        "8e591ec14fa0e3d26837b9a40c99d3a93b49f47e7a3fbe4d0afe1b4e1dd45439",
    ),
    "baby": (
        "0d884186f3aef0e12dafac0a875887fe631de0df992b15158ab177763882bf57",
        "8763bb4b8bbf83b93b6aab03706719fc742fb7d89830a6bd95ea1c2490ea58f7",
    ),
    "books": (
        "40c4c5971165b9e0a509a60472c3bf06c8e1430d4944833141eb3c34d986b65e",
        "b451ac03e48b599bf35dd1a450158389e1ac9018950e95c631053ac14a5b10ad",
    ),
    "camera_photo": (
        "425bf93c303b2f38d2f53649508ea9e55d0114679ecb00fda5c2c15ebbe9e708",
        "3fdea0837d6c41f04720dce8d2e690bbdeb5019ecac749f8f38472ac1dcfa439",
    ),
    "dvd": (
        "47334240d9cef76ac5f15a10f9082c3d2c6e7f9a9bb0478a3800ede2a0300771",
        "762e6e030892375eda4f211be58624a3bb6a07c966901c79b803837d21fca4b5",
    ),
    "electronics": (
        "bb2f28c4a20e3d075dd71ff049970bd445f4d47bcc8404a68eb03850413a8da7",
        "a4d2e7d2a5b8b501a6611e45e1b241aa0d601388b79265cfc94c203cb52f8b8c",
    ),
    "health_personal_care": (
        "384f1ec3d76a2f755844cac4bd7725b86bc79910dae60fc33f133e380f827b4a",
        "07f289177da7ebe71f1ac2ee3d5a25f190913e2a11116f0fb55862e01b60a331",
    ),
    "imdb": (
        "16dd91ee7aebde130cfeb4d1c58bfe221ad87f1862fdb8ae694693eec3432caa",
        "dc708b7338157a6be56a1ded26abd97f82284d0e736876a6b833ad59e8a2cd53",
    ),
    "kitchen_housewares": (
        "df5c9e8473b084a6b252dfbb5e074adcaacb9638a882fee3f20d62d747f45d6f",
        "86bcc015f7cfa773880951830ac6161dc2b8717e8a69773ca11a5bd6529b2020",
    ),
    "magazines": (
        "d4805a9f094c1c7befa64bc42ea846261b1290a2fd120c46f45c9e89faf782ae",
        "620ecd0ccd7b7f73483b8cdcef5ca07dff92e2d57c9cf4b6e9f7d669a681f6c3",
    ),
    "MR": (
        "a6f222085a50061dd560c3beafc968679abae74683e3d18a66b619c5e2d178dc",
        "82ec2a6d570978d173240dfd655c25e151761d7d0ace365725745a361e6fabea",
    ),
    "music": (
        "f0b41243475c16391a02e91d87710ed87d68927d4d77f526a3d2369a98ac572e",
        "54a157c56930b9e587b6b955fe4b2e3258d2f70d0d58ccbbf40a4bfd846ee204",
    ),
    "software": (
        "a050cb3ea22b94b21ce70acff3a23eabd1f39307bd862d6c0cc23170eb4830f4",
        "3b92617a5b3ad618b7aaab98546d49c2a69f46dedbceb4ec14dee1cbb4ff02d3",
    ),
    "sports_outdoors": (
        "062ac0e2fb04a81c1f06f15b219634810a323a2ee187750e2f479030ebad0326",
        "77394d7c91fbc69cc16bfaf79f1f945999fe2d8e0fc536f1f79d17089e611f49",
    ),
    "toys_games": (
        "bb8404d3b48ab02bca2a75bb1e245297aac36b8143a81549f6485b4c2d24dd10",
        "6ee304a53f25697ee96bcb60fe07cc36d282ef343c3e0f8ae09df669ec39b116",
    ),
    "video": (
        "2867b3e5fffc44132aa61ff49dd608eeacc503b2c9c2133680f0cb4a7a258f3e",
        "8de7a49ee3001409c9049b1f52949d78c7875cb92e031b43f5cef681dfd341e4",
    ),
}

#: (path under the data root, URL, SHA-256) of every file the loader reads.
FILES: tuple[tuple[str, str, str], ...] = tuple(
    (f"{FOLDER}/{domain}.task.{split}", f"{URL_BASE}{domain}.task.{split}", digest)
    for domain, digests in SHA256.items()
    for split, digest in zip(("train", "test"), digests, strict=True)
)

TARGETS: dict[str, str] = {domain: "binary" for domain in DOMAINS}
IGNORE: tuple[str, ...] = ("domain", "split")
SUMMARY = "FDU-MTL multi-domain sentiment: 16 binary tasks, one per domain (text input)"
CITATION = (
    "Liu, Qiu and Huang. Adversarial Multi-task Learning for Text Classification. ACL 2017. "
    "Data: Amazon reviews (Blitzer, Dredze and Pereira, ACL 2007), IMDB (Maas et al., ACL "
    "2011), MR (Pang and Lee, ACL 2005)."
)


def encoding_of(domain: str) -> str:
    return "cp1252" if domain == "MR" else "utf-8"


def read_domain_file(path: Path, encoding: str) -> list[tuple[int, str]]:
    """The (label, text) pairs of one ``label<TAB>text`` file, in file order."""
    text = path.read_bytes().decode(encoding, errors="replace")
    rows: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        label, sep, body = line.partition("\t")
        if not sep or label not in ("0", "1"):
            raise DataError(
                f"{path}, line {number}: expected '0' or '1', a tab, then the text; "
                f"got {line[:40]!r}"
            )
        rows.append((int(label), body))
    return rows


def load_fdu_mtl(root: Path) -> pd.DataFrame:
    """Every labelled review of the 16 domains as one frame (see the module docstring).

    Columns: ``text``, ``domain``, ``split`` and one nullable-integer (Int64) label column per
    domain, in :data:`DOMAINS` order; rows grouped by domain, then train, val, test.
    """
    texts: list[str] = []
    domains: list[str] = []
    splits: list[str] = []
    labels: list[int] = []
    for domain in DOMAINS:
        folder = root / FOLDER
        train = read_domain_file(folder / f"{domain}.task.train", encoding_of(domain))
        test = read_domain_file(folder / f"{domain}.task.test", encoding_of(domain))
        if len(train) <= VAL_PER_DOMAIN:
            raise DataError(f"{folder / domain}.task.train: {len(train)} lines, too few")
        cut = len(train) - VAL_PER_DOMAIN
        for split, rows in (("train", train[:cut]), ("val", train[cut:]), ("test", test)):
            for label, text in rows:
                texts.append(text)
                domains.append(domain)
                splits.append(split)
                labels.append(label)
    frame: pd.DataFrame = pd.DataFrame({"text": texts, "domain": domains, "split": splits})
    domain_col = frame["domain"].to_numpy()
    label_series = pd.Series(labels, dtype="Int64")
    for domain in DOMAINS:
        frame[domain] = label_series.where(domain_col == domain)
    return frame
