"""Push a saved DeBERTa-lite checkpoint directory to the Hugging Face Hub, with its remote code and a model card.

    python scripts/push_to_hub.py CHECKPOINT_DIR user/my-model [--private] [--token TOKEN]

Uploads the safetensors weights, config (with the full auto_map), configuration and modeling source files,
tokenizer files and README.md (a generated model card when the directory has none); never intermediate checkpoints
or pickles. Also the way to retry a push that failed at the end of training.
"""

import argparse
import sys

from deberta_lite.hub import HubPushError, push_checkpoint


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir")
    parser.add_argument("repo_id", help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="default: the logged-in token or HF_TOKEN")
    parser.add_argument("--commit_message", default="Upload DeBERTa-lite checkpoint")
    parser.add_argument("--revision", default=None, help="branch to push to")
    args = parser.parse_args(argv)
    try:
        url = push_checkpoint(
            args.checkpoint_dir,
            args.repo_id,
            private=args.private or None,
            token=args.token,
            commit_message=args.commit_message,
            revision=args.revision,
        )
    except HubPushError as error:
        sys.exit(f"error: {error}")
    print(f"pushed {args.checkpoint_dir} to {args.repo_id}: {url}")
    return url


if __name__ == "__main__":
    main()
