"""Write the synthetic action dataset: 4 static classes (texture) and 4 motion classes (movement).

    python examples/make_synthetic_dataset.py vared-demo/data
    vared data check vared-demo/data

Layout 1 (``ROOT/{train,val}/<class>/<video>.mp4``) plus ``ROOT/{train,val}.csv`` for layout 2. See
`vared_convert.data.synthetic` for what each class shows.
"""

from __future__ import annotations

import argparse

from rich.progress import Progress

from vared_convert.data.synthetic import MOTION_CLASSES, STATIC_CLASSES, write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="output folder")
    parser.add_argument("--train-per-class", type=int, default=24)
    parser.add_argument("--val-per-class", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame width and height")
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with Progress(transient=True) as bar:
        task = bar.add_task("writing videos", total=None)
        index = write_synthetic_dataset(
            args.root,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            frames=args.frames,
            size=args.size,
            fps=args.fps,
            seed=args.seed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    counts = ", ".join(f"{len(records)} {split}" for split, records in index.splits.items())
    print(f"wrote {counts} videos to {args.root}")
    print(f"static classes: {', '.join(STATIC_CLASSES)}; motion classes: {', '.join(MOTION_CLASSES)}")


if __name__ == "__main__":
    main()
