/* The data of examples/train_gpt: a byte corpus, a fixed train/validation split, examples
 * addressed by index, a reproducible epoch order, and the byte tokenizer. Plain C11 + POSIX
 * directory reading; no Longhaul API.
 *
 * Corpus. Either one file read as raw bytes (--data FILE), or by default the Debian `fortunes`
 * collection: every regular file directly in /usr/share/games/fortunes, skipping the `.dat`
 * index files (binary), the `.u8` names (links to the same text), symbolic links, hidden names
 * and subdirectories such as `off/`, concatenated in byte-wise (strcmp) file-name order so that
 * every machine with the same package gets the same bytes. The "%" lines that separate
 * fortunes are kept: they mark where one fortune ends, which a sampler can use as a stop
 * sign. A file whose last line is not "%" (five of them in fortunes 1:1.99) is followed by an
 * added "%\n", so the last fortune of one file and the first of the next stay apart.
 *
 * Tokens. One token per byte, its value 0..255 (vocab 256).
 *
 * Split. With N corpus bytes and context T, training takes the first
 *     S = m T + 1 bytes,  m = floor((N - floor(N / 10) - 1) / T)
 * and validation the rest, [S, N): at least the last 10% of the bytes. The two parts share no
 * byte, so no validation byte is ever a training target.
 *
 * Examples. Example i of a part starting at byte P is the T + 1 bytes at P + i T: its inputs
 * are the first T of them and its targets the last T (the same bytes shifted by one), so
 * consecutive examples tile the part and each byte after the first is a target exactly once.
 * The training part holds exactly m examples; validation floor((N - S - 1) / T) (the tail that
 * cannot fill one more is unused). Indices are stable for a given corpus and T, so per-example
 * state (AQ-SGD's buffers) can be keyed by them.
 *
 * Errors: the functions that can fail return 0 or -1; data_error() then says why in one
 * sentence naming the path or the value. Nothing is printed and nothing aborts. A loaded corpus
 * is read-only: several threads may read examples from it at once. */
#ifndef TRAIN_GPT_DATA_H
#define TRAIN_GPT_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DATA_FORTUNES_DIR "/usr/share/games/fortunes"
#define DATA_VOCAB 256
/* The smallest corpus accepted for context T: DATA_MIN_SEQUENCES x (T + 1) bytes. */
#define DATA_MIN_SEQUENCES 128

typedef enum { DATA_TRAIN = 0, DATA_VAL = 1 } data_split;

typedef struct data_corpus data_corpus;

/* The last error of this thread, as a sentence ("" if none). */
const char *data_error(void);

/* Loads `path` as raw bytes, or the fortunes collection when path is NULL, split for context
 * T = `context` (1 .. 1<<20). Refuses a missing or unreadable path, a directory given as a
 * file, an empty corpus, and one under DATA_MIN_SEQUENCES x (T + 1) bytes. 0 and *out, or -1. */
int data_load(const char *path, int context, data_corpus **out);
/* Loads the fortunes collection from `dir` (NULL = DATA_FORTUNES_DIR), as described above. */
int data_load_fortunes(const char *dir, int context, data_corpus **out);
void data_free(data_corpus *c);

/* Where the bytes came from, e.g. "tiny.txt" or "/usr/share/games/fortunes (44 files)". */
const char *data_source(const data_corpus *c);
int data_context(const data_corpus *c);
/* The whole corpus: data_size bytes at data_bytes (what data_hash hashes). */
size_t data_size(const data_corpus *c);
const unsigned char *data_bytes(const data_corpus *c);
/* FNV-1a 64 of the corpus bytes: equal hashes mean (almost surely) the same corpus, for the
 * start banner and for refusing a checkpoint trained on other data. */
uint64_t data_hash(const data_corpus *c);

/* The byte range [offset, offset + bytes) of a split. */
size_t data_split_offset(const data_corpus *c, data_split split);
size_t data_split_bytes(const data_corpus *c, data_split split);
/* The examples of a split; data_train_examples / data_val_examples are the two cases. */
int64_t data_examples(const data_corpus *c, data_split split);
int64_t data_train_examples(const data_corpus *c);
int64_t data_val_examples(const data_corpus *c);

/* Example `index` of `split`: tokens[t] = byte P + index T + t, targets[t] = the byte after
 * it, t in [0, T). -1 for an index outside [0, data_examples) or an unknown split. */
int data_example(const data_corpus *c, data_split split, int64_t index, int *tokens, int *targets);

/* A deterministic permutation of the ids first .. first + count - 1 into out[0 .. count): a
 * Fisher-Yates shuffle driven by splitmix64, keyed by (seed, epoch, first, count), so each
 * data-parallel replica shuffles its own shard every epoch the same way on every run, and two
 * shards of the same size do not visit their examples in the same relative order. -1 for
 * count < 0, first < 0, first + count overflowing, or out NULL with count > 0. */
int data_shuffle(uint64_t seed, int epoch, int64_t first, int64_t count, int64_t *out);

/* tokens[i] = bytes[i] for i < n. */
void data_encode(const unsigned char *bytes, size_t n, int *tokens);
/* Tokens as printable text for sampling output: printable ASCII and newline as themselves,
 * backslash as "\\", tab as "\t", every other byte (UTF-8 included) as "\xHH", a token outside
 * 0..255 as "\?". At most 4 characters per token, so 4 n + 1 is always enough room. Writes the
 * escapes of whole tokens while they fit in cap - 1 characters, then a NUL (if cap > 0);
 * returns the length of the whole text (like snprintf), so a result >= cap means cut short. */
size_t data_decode(const int *tokens, size_t n, char *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
