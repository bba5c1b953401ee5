// cluster-key-slot ships no types: the slot (0-16383) of a key, honouring hash tags.
declare module "cluster-key-slot" {
  function calculateSlot(key: string | Buffer): number;
  namespace calculateSlot {
    /** The slot of all `keys`, or -1 if they are not all in one slot. */
    function generateMulti(keys: (string | Buffer)[]): number;
  }
  export = calculateSlot;
}
