"""``python -m mindswin.data DIR``: write the built-in demo ImageFolder dataset."""
import argparse

from .synthetic import SHAPES, make_demo_dataset

parser = argparse.ArgumentParser(description="Write the procedural shapes dataset as DIR/{train,val}/<shape>/")
parser.add_argument("root")
parser.add_argument("--num_classes", type=int, default=4, choices=range(2, len(SHAPES) + 1))
parser.add_argument("--train_per_class", type=int, default=200)
parser.add_argument("--val_per_class", type=int, default=50)
parser.add_argument("--image_size", type=int, default=64)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
counts = make_demo_dataset(args.root, num_classes=args.num_classes, train_per_class=args.train_per_class,
                           val_per_class=args.val_per_class, image_size=args.image_size, seed=args.seed)
print(f"wrote {counts['train']} train and {counts['val']} val images of {args.num_classes} classes to {args.root}")
