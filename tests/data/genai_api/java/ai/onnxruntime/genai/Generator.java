/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/Generator.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

public final class Generator implements AutoCloseable, Iterable<Integer> {
  public Generator(Model model, GeneratorParams generatorParams) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public java.util.Iterator<Integer> iterator() { throw new UnsupportedOperationException("declaration-only stub"); }

  public boolean isDone() { throw new UnsupportedOperationException("declaration-only stub"); }

  public void setModelInput(String name, Tensor tensor) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void setInputs(NamedTensors namedTensors) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void appendTokens(int[] inputIDs) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void appendTokenSequences(Sequences sequences) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public long tokenCount() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void rewindTo(long newLength) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void generateNextToken() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int[] getSequence(long sequenceIndex) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public SpeculativeStats getSpeculativeStats() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public int getLastTokenInSequence(long sequenceIndex) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public Tensor getInput(String name) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public Tensor getOutput(String name) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void setActiveAdapter(Adapters adapters, String adapterName) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("declaration-only stub"); }
}
