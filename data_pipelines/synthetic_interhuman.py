"""Writes a synthetic two-person interaction data set in InterHuman's exact on-disk layout.

What it is for: tests, smoke runs and demos of the whole pipeline (builders, loaders, training,
evaluation) without the licensed InterHuman download. The motions are procedural
(``synthetic_motions``) but physically sensible (feet on the floor, planted feet still, hands
meeting where the text says so), and every caption describes the clip it belongs to, so a
model trained on it learns a real text -> motion mapping::

    ROOT/annots/<id>.txt                      3 captions, one per line
    ROOT/motions_processed/person{1,2}/<id>.npy   float32 (T, 492), z-up world frame
    ROOT/split/{train,val,test}.txt           one id per line
    ROOT/split/ignore_list.txt                ids to skip (real clips, listed in train)
    ROOT/annots_individual/person{1,2}/<id>.txt   one per-person text per caption line

Raw columns as in InterHuman: [0:66] the 22 SMPL body joints, [66:186] 40 hand joints (left
hand then right, thumb..pinky, three joints and a tip each), [186:312] local 6D rotations of
body joints 1..21, [312:492] 30 finger rotations. Body positions are exactly the forward
kinematics of the stored rotations (``skeleton.REST_OFFSETS``); the fingers hold a still,
slightly curled pose.

Clip ids are "1", "2", ... (id = index + 1) with the interaction types interleaved. Lengths are
mostly 60-240 frames; indices 5, 18, 31, ... (index % 13 == 5) are longer than 300 frames and
indices 11, 24, ... are shorter than 15 (loaders drop those), so even a two-clips-per-type set
has both. The initiator of an asymmetric interaction (the pusher, the first to wave, the one
who walks up) is person 1 in about half of the clips. Usage::

    python -m data_pipelines.synthetic_interhuman --root /tmp/interhuman_synth --clips_per_type 24
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import numpy as np

from data_pipelines import synthetic_motions

INTERACTION_TYPES: tuple[str, ...] = tuple(synthetic_motions.CHOREOGRAPHIES)
SPLITS = ('train', 'val', 'test')
_LONG, _SHORT, _IGNORED = 5, 11, 3  # clip index % 13 (long, short) and % 29 (ignored)
_ADVERB = {'slow': 'slowly ', 'normal': '', 'fast': 'quickly '}

# Caption templates per (interaction, variant): captions, then per-person texts of the active
# and of the passive person, aligned line by line with the chosen captions.
_TEXTS = {
    ('handshake', 'both'): (
        ['Two people {adv}walk toward each other and shake hands with their {hand} hands.',
         'Two people {adv}approach each other, then shake {hand} hands and let go.',
         'Two persons come together and greet each other with a {hand}-handed handshake.',
         'Two people {adv}walk up to each other, reach out their {hand} hands and shake hands.'],
        ['The person {adv}walks toward the other person and shakes hands with the {hand} hand.',
         "The person {adv}approaches the other person and shakes the other person's {hand} hand.",
         'The person walks forward, reaches out the {hand} hand and shakes hands with the other '
         'person.'],
        None),
    ('handshake', 'one'): (
        ['One person {adv}walks up to the other and they shake hands with their {hand} hands.',
         'One person {adv}approaches the other person, who waits, and they shake {hand} hands.',
         "A person {adv}walks over to another person standing still and shakes the other's "
         '{hand} hand.',
         'One person comes closer to the other and the two greet each other with a '
         '{hand}-handed handshake.'],
        ['The person {adv}walks up to the other person and shakes hands with the {hand} hand.',
         "The person {adv}approaches the waiting person and shakes the other person's {hand} hand.",
         'The person walks forward and greets the other person with a {hand}-handed handshake.'],
        ['The person stands still, waits for the other person and shakes hands with the {hand} '
         'hand.',
         "The person waits for the other person to come closer and shakes the other person's "
         '{hand} hand.',
         'The person stays in place and reaches out the {hand} hand to shake hands.']),
    ('wave', 'both'): (
        ['Two people standing apart wave at each other{pair_hands}.',
         'Two people face each other from a distance and wave{pair_hands}.',
         'Two persons greet each other by waving{pair_hands}.',
         'Standing a few steps apart, two people wave to each other{pair_hands}.'],
        ['The person raises the {hand_a} hand and waves at the other person.',
         'The person waves at the other person with the {hand_a} hand.',
         'The person stands facing the other person and waves with the {hand_a} hand.'],
        ['The person raises the {hand_p} hand and waves at the other person.',
         'The person waves at the other person with the {hand_p} hand.',
         'The person stands facing the other person and waves with the {hand_p} hand.']),
    ('wave', 'first'): (
        ['One person waves at the other with the {hand_a} hand, and the other waves back with '
         'the {hand_p} hand.',
         'A person raises the {hand_a} hand to wave, and the other person answers by waving the '
         '{hand_p} hand.',
         'One person greets the other from a distance by waving the {hand_a} hand; the other '
         'waves back with the {hand_p} hand.',
         'Two people stand apart; one waves with the {hand_a} hand and the other waves back with '
         'the {hand_p} hand.'],
        ['The person waves at the other person first, with the {hand_a} hand.',
         'The person raises the {hand_a} hand and greets the other person by waving.',
         'The person starts waving at the other person with the {hand_a} hand.'],
        ['The person sees the other person waving and waves back with the {hand_p} hand.',
         'The person answers the greeting by waving the {hand_p} hand.',
         'The person waves back at the other person with the {hand_p} hand.']),
    ('push', ''): (
        ['One person pushes the other, who stumbles backward.',
         'A person steps forward and shoves the other person with both hands, and the other '
         'staggers back several steps.',
         "One person pushes the other person's chest with both hands, making the other stumble "
         'backward.',
         'Someone pushes another person hard, and the pushed person stumbles back a few steps.'],
        ['The person steps forward and pushes the other person with both hands.',
         "The person shoves the other person's chest with both hands.",
         'The person moves toward the other person and pushes the other person away.'],
        ['The person is pushed by the other person and stumbles backward.',
         'The person gets shoved in the chest and staggers back several steps.',
         'The person is pushed away and stumbles back, throwing the arms forward to keep '
         'balance.']),
    ('hug', 'both'): (
        ['Two people {adv}walk toward each other and hug.',
         'Two people {adv}approach each other, embrace, and then let go.',
         'Two persons come together, wrap their arms around each other and hold the hug for a '
         'moment.',
         'Two people meet and give each other a warm hug.'],
        ['The person {adv}walks toward the other person and hugs the other person.',
         'The person {adv}approaches the other person, embraces the other person and then lets '
         'go.',
         'The person wraps both arms around the other person and holds the hug.'],
        None),
    ('hug', 'one'): (
        ['One person {adv}walks up to the other and they hug.',
         'One person {adv}approaches the other person, who is standing still, and they embrace.',
         'A person walks over to another person and the two hug each other.',
         'One person comes closer to the other and the two wrap their arms around each other.'],
        ['The person {adv}walks up to the other person and hugs the other person.',
         'The person {adv}approaches the standing person and embraces the other person.',
         'The person walks over and wraps both arms around the other person.'],
        ['The person stands still until the other person arrives, then hugs the other person.',
         'The person waits for the other person and embraces the other person.',
         'The person stays in place and wraps both arms around the other person.']),
    ('walk_side_by_side', ''): (
        ['Two people {adv}walk forward side by side.',
         'Two people {adv}walk next to each other in the same direction.',
         'Two persons walk together side by side.',
         'Side by side, two people {adv}walk forward together.'],
        ['The person {adv}walks forward on the {side_a} of the other person.',
         "The person walks next to the other person, staying on the other person's {side_a}.",
         "The person {adv}walks side by side with the other person, who is on the person's "
         '{side_p}.'],
        ['The person {adv}walks forward on the {side_p} of the other person.',
         "The person walks next to the other person, staying on the other person's {side_p}.",
         "The person {adv}walks side by side with the other person, who is on the person's "
         '{side_a}.']),
    ('circle', ''): (
        ['Two people circle around each other {direction}, facing each other.',
         'Two people {adv}move {direction} around each other while facing each other.',
         'Facing each other, two people {adv}sidestep {direction} in a circle.',
         'Two persons walk {direction} in a circle around a common center, keeping their eyes '
         'on each other.'],
        ['The person {adv}sidesteps {direction} around the other person while facing the other '
         'person.',
         'The person circles {direction} around the other person, always facing the other '
         'person.',
         'The person moves {direction} in a circle, keeping the other person in front.'],
        None),
    ('bow', 'both'): (
        ['Two people face each other and bow at the same time.',
         'Two people standing face to face bow to each other and straighten up.',
         'Two persons bow politely to each other, hold for a moment, then stand up straight.',
         'Facing each other, two people bend forward in a bow and then rise.'],
        ['The person bows to the other person and straightens up.',
         'The person bends forward at the waist to bow, holds, then stands up.',
         'The person faces the other person and bows politely.'],
        None),
    ('bow', 'first'): (
        ['One person bows to the other, and the other bows back.',
         'A person bows politely and the other person returns the bow.',
         'Two people face each other; one bows first and the other then bows in return.',
         'One person bends forward in a bow, and the other person answers with a bow.'],
        ['The person bows to the other person first and then straightens up.',
         'The person bends forward at the waist in a bow, then stands up straight.',
         'The person faces the other person and bows first.'],
        ['The person bows back after the other person bows.',
         "The person returns the other person's bow.",
         "The person waits for the other person's bow and then bows in return."]),
    ('dance', ''): (
        ["Two people hold each other's hands and dance, turning {direction} together{end}.",
         'Two people face each other, join both hands and sway while turning {direction}{end}.',
         'Holding hands, two persons dance around {direction}{end}.',
         'Two people dance together hand in hand, swaying and turning {direction}{end}.'],
        ['The person holds both hands of the other person and dances, turning {direction}'
         '{ends}.',
         'The person sways while holding hands with the other person and turning {direction}'
         '{ends}.',
         'The person dances hand in hand with the other person, going around {direction}{ends}.'],
        None),
    ('high_five', 'both'): (
        ['Two people {adv}walk toward each other and give each other a high five with their '
         '{hand} hands.',
         'Two people {adv}approach each other, raise their {hand} hands and slap them together '
         'above their heads.',
         'Two persons meet and high-five each other with their {hand} hands.',
         'Two people come together and clap their raised {hand} hands in a high five.'],
        ['The person {adv}walks toward the other person and high-fives the other person with the '
         '{hand} hand.',
         "The person {adv}approaches the other person and slaps the other person's raised "
         '{hand} hand.',
         'The person raises the {hand} hand overhead and gives the other person a high five.'],
        None),
    ('high_five', 'one'): (
        ['One person {adv}walks up to the other and they high-five with their {hand} hands.',
         'One person {adv}approaches the other, who waits, and they slap their raised {hand} '
         'hands together.',
         'A person walks over to another person and the two give each other a {hand}-handed '
         'high five.',
         'One person comes closer to the other and the two clap their {hand} hands together '
         'overhead.'],
        ['The person {adv}walks up to the other person and high-fives the other person with the '
         '{hand} hand.',
         "The person {adv}approaches the waiting person and slaps the other person's raised "
         '{hand} hand.',
         'The person walks over and gives the other person a high five with the {hand} hand.'],
        ['The person waits for the other person and high-fives the other person with the {hand} '
         'hand.',
         "The person stands still, raises the {hand} hand and slaps the other person's hand.",
         'The person stays in place and gives the other person a high five with the {hand} '
         'hand.']),
    ('follow', ''): (
        ['One person {adv}walks ahead and the other person follows behind.',
         'A person {adv}walks forward while another person follows a few steps behind.',
         'Two people walk in a line; one leads and the other follows.',
         'One person starts walking and the other person {adv}follows after a moment.'],
        ['The person {adv}walks forward while the other person follows.',
         'The person leads the way, walking ahead of the other person.',
         'The person starts walking first and the other person comes after.'],
        ['The person {adv}follows the other person, walking behind.',
         'The person walks behind the other person, following the same path.',
         'The person waits a moment and then follows the other person from behind.']),
}


@dataclasses.dataclass(frozen=True)
class ClipInfo:
  """What ``generate`` wrote for one clip."""
  clip_id: str
  interaction: str
  num_frames: int
  split: str       # 'train' | 'val' | 'test'
  ignored: bool    # listed in split/ignore_list.txt


def _num_frames(index: int, rng: np.random.Generator, fps: int) -> int:
  if index % 13 == _SHORT:  # kept below 15 frames whatever the fps: loaders drop these
    return int(rng.integers(8, 15))
  low, high = (320, 401) if index % 13 == _LONG else (60, 241)
  return int(round(rng.integers(low, high) * fps / 30))


def _texts(interaction: str, slots: dict, rng: np.random.Generator):
  """3 captions and the aligned texts of the active and of the passive person."""
  variant = slots.get('variant', '')
  key = (interaction, variant if (interaction, variant) in _TEXTS else '')
  captions, active, passive = _TEXTS[key]
  fill = dict(slots, adv=_ADVERB[slots.get('speed', 'normal')])
  if 'hand_a' in slots:
    hand_a, hand_p = slots['hand_a'], slots['hand_p']
    fill['pair_hands'] = (f' with their {hand_a} hands' if hand_a == hand_p else
                          f', one with the {hand_a} hand and the other with the {hand_p} hand')
  release = variant == 'release'
  fill['end'], fill['ends'] = (', then let go', ', then lets go') if release else ('', '')
  chosen = rng.choice(len(captions), size=3, replace=False)
  order = rng.permutation(3)
  lines = lambda templates: [templates[i].format(**fill) for i in order]
  return ([captions[i].format(**fill) for i in chosen], lines(active),
          lines(passive if passive is not None else active))


def _assign_splits(kinds, lengths, ignored, rng, clips_per_type):
  """Stratified ~80/10/10 split; val and test take only clips a loader keeps (>= 15 frames,
  not ignored), and every type keeps at least one such clip in train."""
  split = ['train'] * len(kinds)
  usable = {k: [i for i in range(len(kinds)) if kinds[i] == k and lengths[i] >= 15
                and not ignored[i]] for k in INTERACTION_TYPES}
  for k in INTERACTION_TYPES:
    usable[k] = [usable[k][j] for j in rng.permutation(len(usable[k]))]
  if clips_per_type >= 10:
    for k in INTERACTION_TYPES:
      n = max(1, round(0.1 * clips_per_type))
      for i in usable[k][:n]:
        split[i] = 'val'
      for i in usable[k][n:2 * n]:
        split[i] = 'test'
    return split
  # Small sets: about 10% each overall, spread over the types round-robin.
  quota = round(0.1 * len(kinds))
  candidates = [usable[k][j] for j in range(clips_per_type) for k in INTERACTION_TYPES
                if j < len(usable[k]) - 1]
  for n, i in enumerate(candidates[:2 * quota]):
    split[i] = 'val' if n % 2 == 0 else 'test'
  return split


def _check_root(root: pathlib.Path) -> None:
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise ValueError(
        f'{root} exists and is not an empty directory; synthetic_interhuman.generate writes a '
        'fresh data set and never mixes it with existing files. Pass a new or empty directory '
        'as root (or delete this one).')


def generate(root, *, seed: int = 0, clips_per_type: int = 24, fps: int = 30) -> list[ClipInfo]:
  """Writes the data set under root (created if missing; refuses with a clear ValueError if root
  exists and is not empty) and returns what it wrote.

  Same seed -> byte-identical files. Each clip draws from ``default_rng([seed, index])``, so a
  clip does not change when clips_per_type grows.
  """
  root = pathlib.Path(root)
  _check_root(root)
  if clips_per_type < 1:
    raise ValueError(f'clips_per_type must be >= 1, got {clips_per_type}.')
  num_clips = clips_per_type * len(INTERACTION_TYPES)
  rngs = [np.random.default_rng([seed, i]) for i in range(num_clips)]
  kinds = [INTERACTION_TYPES[i % len(INTERACTION_TYPES)] for i in range(num_clips)]
  lengths = [_num_frames(i, rngs[i], fps) for i in range(num_clips)]
  ignored = [i % 29 == _IGNORED for i in range(num_clips)]
  split = _assign_splits(kinds, lengths, ignored, np.random.default_rng([seed, 0, 7]),
                         clips_per_type)

  dirs = {name: root / name for name in (
      'annots', 'motions_processed/person1', 'motions_processed/person2', 'split',
      'annots_individual/person1', 'annots_individual/person2')}
  for path in dirs.values():
    path.mkdir(parents=True, exist_ok=True)
  infos = []
  for i in range(num_clips):
    clip_id, rng = str(i + 1), rngs[i]
    active, passive, slots = synthetic_motions.perform(kinds[i], lengths[i], rng, fps)
    captions, active_texts, passive_texts = _texts(kinds[i], slots, rng)
    persons = [(active, active_texts), (passive, passive_texts)]
    if rng.random() < 0.5:  # the initiator is person 1 in about half of the clips
      persons.reverse()
    for p, (motion, texts) in enumerate(persons, start=1):
      np.save(dirs[f'motions_processed/person{p}'] / f'{clip_id}.npy', motion)
      (dirs[f'annots_individual/person{p}'] / f'{clip_id}.txt').write_text('\n'.join(texts) + '\n')
    (dirs['annots'] / f'{clip_id}.txt').write_text('\n'.join(captions) + '\n')
    infos.append(ClipInfo(clip_id, kinds[i], lengths[i], split[i], ignored[i]))
  for name in SPLITS:
    ids = [c.clip_id for c in infos if c.split == name]
    (dirs['split'] / f'{name}.txt').write_text(''.join(f'{c}\n' for c in ids))
  (dirs['split'] / 'ignore_list.txt').write_text(''.join(f'{c.clip_id}\n' for c in infos
                                                         if c.ignored))
  return infos


def main(argv=None) -> None:
  """Command line: writes the data set and prints a one-line summary."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--root', required=True, help='new or empty output directory')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--clips_per_type', type=int, default=24)
  parser.add_argument('--fps', type=int, default=30)
  args = parser.parse_args(argv)
  infos = generate(args.root, seed=args.seed, clips_per_type=args.clips_per_type, fps=args.fps)
  counts = {name: sum(c.split == name for c in infos) for name in SPLITS}
  print(f'Wrote {len(infos)} clips of {len(INTERACTION_TYPES)} interaction types to {args.root}: '
        f"{counts['train']} train / {counts['val']} val / {counts['test']} test, "
        f'{sum(c.ignored for c in infos)} ignored, {sum(c.num_frames < 15 for c in infos)} '
        f'shorter than 15 frames, {sum(c.num_frames > 300 for c in infos)} longer than 300.')


if __name__ == '__main__':
  main()
